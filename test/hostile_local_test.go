package test

import (
	"context"
	"testing"
	"time"
)

// gwServerSide is the gateway's address on the server's side of the lab.
const gwServerSide = "198.51.100.1"

// asNobody runs a Python script in the gateway's namespace as uid 65534,
// with the system's Python (the one on root's PATH may be root's own).
func asNobody(args ...string) []string {
	return append([]string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3"}, args...)
}

// TestHostileLocalUser: an unprivileged user on the gateway logs into an
// outside FTP server and announces, with PORT, root's service on the
// gateway's port 8443: the server must not reach it. The same user's own
// listener, announced the same way, is reached; an FTP client run by
// root on the gateway transfers in active mode as before.
func TestHostileLocalUser(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	d := startFtpgate(t)
	serveBanner(t, ns("gw"), gwServerSide, 8443, "root's service")
	items := []string{"@read", "USER anonymous\r\n", "@read", "PASS x\r\n", "@read", "PORT 198,51,100,1,32,251\r\n", "@read", "@sleep=5"}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := inNS(ctx, "gw", asNobody(append([]string{"ftpclient.py", "send", server4 + ":21"}, items...)...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	d.waitLog(t, 5*time.Second, "channel refused", "command", "PORT", "resp_p", "8443")
	if got := bannerFrom(ns("server"), "", gwServerSide, 8443); got != "" {
		t.Errorf("the server reached root's port 8443 of the gateway: %q", got)
	}
	// The user's own listener, announced by the user: opened.
	own := inNS(ctx, "gw", asNobody("-c", `import socket,time
l=socket.socket(); l.bind(("198.51.100.1",45000)); l.listen()
print("ok", flush=True)
c,_=l.accept(); c.sendall(b"nobody's own\n"); time.sleep(1)`)...)
	startReady(t, own, "the unprivileged listener")
	send := inNS(ctx, "gw", asNobody(append([]string{"ftpclient.py", "send", server4 + ":21"},
		"@read", "USER anonymous\r\n", "@read", "PASS x\r\n", "@read", "PORT 198,51,100,1,175,200\r\n", "@read", "@sleep=5")...)...)
	if err := send.Start(); err != nil {
		t.Fatal(err)
	}
	defer send.Wait()
	d.waitLog(t, 5*time.Second, "channel open", "command", "PORT", "resp_p", "45000")
	if got := bannerFrom(ns("server"), "", gwServerSide, 45000); got != "nobody's own" {
		t.Errorf("the server did not reach the user's own listener: %q", got)
	}
	// Root's FTP client on the gateway, active mode, a real transfer.
	x := transfer{name: "curl PORT from the gateway", netns: ns("gw"),
		argv: []string{"curl", "-sS", "--max-time", "8", "-o", "OUT", "--ftp-port", "-", "--disable-eprt", "ftp://" + server4 + "/file.bin"}}
	if err := x.run(t); err != nil {
		t.Errorf("%s: %v", x.name, err)
	}
	if r := d.find("channel refused", "resp_h", gwServerSide); len(r) != 1 {
		t.Errorf("refusals for the gateway's own announcements: %v", r)
	}
}
