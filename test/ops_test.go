package test

import (
	"fmt"
	"testing"
	"time"
)

// TestRulesetMissingLine: with the accept line for ftpgate's mark
// missing, ftpgate says so at start-up, naming each chain, and a data
// connection it admits that the ruleset then drops is logged and counted
// as such, not as started.
func TestRulesetMissingLine(t *testing.T) {
	needLab(t)
	setRuleset(t, "none")
	defer setRuleset(t, "ftpgate")
	d := startFtpgate(t)
	for _, chain := range []string{"inet filter forward", "inet filter input"} {
		d.waitLog(t, 2*time.Second, "your ruleset will drop the data connections ftpgate admits: add the accept line before the drop",
			"chain", chain, "add", "ct mark & 0x01000000 == 0x01000000 accept")
	}
	if err := curl("curl PASV", "ftp://"+server4+"/file.bin", "--ftp-pasv", "--disable-epsv").run(t); err == nil {
		t.Fatal("a transfer worked without the accept line")
	}
	r := d.waitLog(t, 5*time.Second, "channel closed", "reason", "admitted but dropped by the ruleset")
	if fmt.Sprint(r["level"]) != "WARN" {
		t.Errorf("logged at %v", r["level"])
	}
	if n := len(d.find("channel closed", "reason", "data connection started")); n != 0 {
		t.Errorf("%d channels logged as started although the ruleset dropped them", n)
	}
	d.stop(t)
	if n := len(d.find("ftpgate stopped", "admitted_dropped", "1")); n != 1 {
		t.Errorf("exit line does not count the dropped connection: %v", d.find("ftpgate stopped"))
	}
}

// TestRulesetWithLineIsQuiet: the lab's own ruleset draws no warning,
// and its data connections are confirmed as started.
func TestRulesetWithLineIsQuiet(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	d := startFtpgate(t)
	if err := curl("curl PASV", "ftp://"+server4+"/file.bin", "--ftp-pasv", "--disable-epsv").run(t); err != nil {
		t.Fatal(err)
	}
	d.waitLog(t, 5*time.Second, "channel closed", "reason", "data connection started")
	if w := d.find("your ruleset will drop the data connections ftpgate admits: add the accept line before the drop"); len(w) != 0 {
		t.Errorf("warned about a ruleset that has the line: %v", w)
	}
}
