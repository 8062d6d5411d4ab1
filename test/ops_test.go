package test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
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

// TestStatusDuringSession: `ftpgate status` shows a live session, its
// open pinhole (with whether it reached the kernel: at once with no
// commit delay, not yet with a long one) and the counters, as JSON and
// as text.
func TestStatusDuringSession(t *testing.T) {
	for _, delay := range []string{"0s", "1m"} {
		t.Run(delay, func(t *testing.T) { testStatusDuringSession(t, delay, delay == "0s") })
	}
}

func testStatusDuringSession(t *testing.T, delay string, committed bool) {
	needLab(t)
	setRuleset(t, "ftpgate")
	sock := filepath.Join(t.TempDir(), "status.sock")
	d := startFtpgate(t, "--status-socket", sock, "--commit-delay", delay)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	hold := inNS(ctx, "client", "python3", "ftpclient.py", "hold", server4, "PASV", "4")
	out := startPiped(t, hold)
	defer hold.Wait()
	line, _ := bufio.NewReader(out).ReadString('\n')
	// The client has the 227 as soon as the kernel forwards it; ftpgate
	// reads its copy a moment later (copies come in batches).
	d.waitLog(t, 3*time.Second, "channel open")
	var h [6]int
	if i := strings.IndexByte(line, '('); i < 0 {
		t.Fatalf("PASV reply %q", line)
	} else {
		fmt.Sscanf(line[i:], "(%d,%d,%d,%d,%d,%d)", &h[0], &h[1], &h[2], &h[3], &h[4], &h[5])
	}
	port := h[4]<<8 | h[5]

	b, err := exec.Command(bin, "status", "--socket", sock, "--format", "json").CombinedOutput()
	if err != nil {
		t.Fatalf("ftpgate status: %v\n%s", err, b)
	}
	var st struct {
		Sessions []struct {
			Client, Server, State string
		}
		Pinholes []struct {
			Peer, Addr string
			Committed  bool
		}
		Counters map[string]any `json:"counters"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	if len(st.Sessions) != 1 || !strings.HasPrefix(st.Sessions[0].Client, "192.0.2.10:") || st.Sessions[0].Server != server4+":21" || st.Sessions[0].State != "clear" {
		t.Errorf("sessions %+v", st.Sessions)
	}
	want := fmt.Sprintf("%s:%d", server4, port)
	if len(st.Pinholes) != 1 || st.Pinholes[0].Peer != "192.0.2.10" || st.Pinholes[0].Addr != want || st.Pinholes[0].Committed != committed {
		t.Errorf("pinholes %+v, want 192.0.2.10 -> %s, committed %v", st.Pinholes, want, committed)
	}
	if fmt.Sprint(st.Counters["channels_opened"]) != "1" || fmt.Sprint(st.Counters["sessions_started"]) != "1" {
		t.Errorf("counters %v", st.Counters)
	}
	text, err := exec.Command(bin, "status", "--socket", sock).CombinedOutput()
	inKernel := map[bool]string{true: "PINHOLES: 1 (1 in the kernel)", false: "PINHOLES: 1 (0 in the kernel)"}[committed]
	if err != nil || !strings.Contains(string(text), inKernel) || !strings.Contains(string(text), want) {
		t.Errorf("text status (%v):\n%s", err, text)
	}
}

// TestMetricsDuringTransfers scrapes /metrics over HTTP around real
// transfers and checks the values move as they must.
func TestMetricsDuringTransfers(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	startFtpgate(t, "--metrics-listen", "127.0.0.1:9121")
	scrape := func() map[string]float64 {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		out, err := inNS(ctx, "gw", "curl", "-sS", "http://127.0.0.1:9121/metrics").CombinedOutput()
		if err != nil {
			t.Fatalf("scraping: %v\n%s", err, out)
		}
		m := map[string]float64{}
		for _, l := range strings.Split(string(out), "\n") {
			if l == "" || strings.HasPrefix(l, "#") {
				continue
			}
			i := strings.LastIndexByte(l, ' ')
			var v float64
			fmt.Sscan(l[i+1:], &v)
			m[l[:i]] = v
		}
		return m
	}
	before := scrape()
	for _, x := range []transfer{
		curl("curl PASV", "ftp://"+server4+"/file.bin", "--ftp-pasv", "--disable-epsv"),
		curl("curl PORT", "ftp://"+server4+"/file.bin", "--ftp-port", "-", "--disable-eprt"),
	} {
		if err := x.run(t); err != nil {
			t.Fatalf("%s: %v", x.name, err)
		}
	}
	time.Sleep(1500 * time.Millisecond) // the snapshot is published at the next tick
	after := scrape()
	for name, want := range map[string]float64{
		"ftpgate_pinholes_opened_total":                  2,
		"ftpgate_data_connections_admitted_total":        2,
		`ftpgate_pinholes_closed_total{reason="used"}`:   2,
		"ftpgate_sessions_started_total":                 2,
		`ftpgate_channels_refused_total{reason="other"}`: 0,
	} {
		if got := after[name] - before[name]; got != want {
			t.Errorf("%s grew by %v, want %v", name, got, want)
		}
	}
	if !hasPrefixKey(after, "ftpgate_build_info{") {
		t.Error("no ftpgate_build_info")
	}
	if after["ftpgate_commit_duration_seconds_count"] <= before["ftpgate_commit_duration_seconds_count"] {
		t.Error("no commit was timed")
	}
	if _, ok := after["ftpgate_held_syn_wait_seconds_count"]; !ok {
		t.Error("no held SYN histogram")
	}
}

func hasPrefixKey(m map[string]float64, p string) bool {
	for k := range m {
		if strings.HasPrefix(k, p) {
			return true
		}
	}
	return false
}

// TestConfigReload: a SIGHUP applies a changed per-server policy to the
// next transfer; a broken file on reload keeps the running configuration.
func TestConfigReload(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	conf := filepath.Join(t.TempDir(), "ftpgate.toml")
	write := func(text string) {
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("[[server]]\naddress = \"" + server4 + "\"\nactive = true\n")
	d := startFtpgate(t, "--config", conf)
	port := curl("curl PORT", "ftp://"+server4+"/file.bin", "--ftp-port", "-", "--disable-eprt")
	if err := port.run(t); err != nil {
		t.Fatalf("active mode allowed by the file: %v", err)
	}
	write("[[server]]\naddress = \"" + server4 + "\"\nactive = false\n")
	_ = d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitLog(t, 5*time.Second, "configuration reloaded", "changed", "server (1 entries)")
	if err := port.run(t); err == nil {
		t.Error("active mode still worked after the reload refused it")
	}
	d.waitLog(t, 5*time.Second, "channel refused", "reason", "active mode is not allowed to server "+server4+":21 (its [[server]] entry "+server4+"/32)")

	write("[[server]]\naddress = \"" + server4 + "\"\nactive = maybe\n")
	_ = d.cmd.Process.Signal(syscall.SIGHUP)
	r := d.waitLog(t, 5*time.Second, "configuration not reloaded: the running one stays")
	if !strings.Contains(fmt.Sprint(r["error"]), conf+":3:") {
		t.Errorf("the error does not name the line: %v", r["error"])
	}
	if err := curl("curl PASV", "ftp://"+server4+"/file.bin", "--ftp-pasv", "--disable-epsv").run(t); err != nil {
		t.Errorf("passive mode after a broken reload: %v", err)
	}
	if err := port.run(t); err == nil {
		t.Error("the broken file changed the running policy")
	}
	if d.cmd.ProcessState != nil {
		t.Fatal("SIGHUP ended the daemon")
	}
}

// TestInlineInterfaceScoping: --interface scopes inline capture. Watching
// the client's side, transfers work; watching only an interface that
// carries none of the control traffic, nothing is copied and the data
// connections are dropped.
func TestInlineInterfaceScoping(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	pasv := curl("curl PASV", "ftp://"+server4+"/file.bin", "--ftp-pasv", "--disable-epsv")
	port := curl("curl PORT", "ftp://"+server4+"/file.bin", "--ftp-port", "-", "--disable-eprt")
	d := startFtpgate(t, "--interface", lab+"-g0")
	for _, x := range []transfer{pasv, port} {
		if err := x.run(t); err != nil {
			t.Errorf("%s watching the client's interface: %v", x.name, err)
		}
	}
	d.stop(t)
	d = startFtpgate(t, "--interface", "lo")
	for _, x := range []transfer{pasv, port} {
		if err := x.run(t); err == nil {
			t.Errorf("%s worked though ftpgate watched only lo", x.name)
		}
	}
	if n := len(d.find("session start")); n != 0 {
		t.Errorf("%d sessions seen on an interface that carries none", n)
	}
}

// TestConfigReloadRemovesFTPSRange: taking a server's FTPS range out of
// the file (the line, or the whole [[server]] entry) and sending SIGHUP
// closes the range of a live session at once, with a log line, and the
// next session gets none.
func TestConfigReloadRemovesFTPSRange(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	for _, removal := range []string{"the line", "the entry"} {
		t.Run(removal, func(t *testing.T) {
			conf := filepath.Join(t.TempDir(), "ftpgate.toml")
			write := func(text string) {
				if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			write("control-ports = [21, 2141]\n[[server]]\naddress = \"" + server4 + "\"\nftps-passive-ports = \"" + ftpsRange + "\"\n")
			d := startFtpgate(t, "--config", conf)
			serveBanner(t, ns("server"), server4, rangePort, "in the range")
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			hold := inNS(ctx, "client", "python3", "ftpclient.py", "tlshold", server4+":2141", "8")
			if err := hold.Start(); err != nil {
				t.Fatal(err)
			}
			defer hold.Wait()
			d.waitLog(t, 5*time.Second, "scoped range open", "ports", ftpsRange)
			if got := bannerFrom(ns("client"), "", server4, rangePort); got != "in the range" {
				t.Fatalf("no range before the reload: %q", got)
			}
			if removal == "the line" {
				write("control-ports = [21, 2141]\n[[server]]\naddress = \"" + server4 + "\"\n")
			} else {
				write("control-ports = [21, 2141]\n")
			}
			_ = d.cmd.Process.Signal(syscall.SIGHUP)
			d.waitLog(t, 5*time.Second, "configuration reloaded", "scoped_ranges_closed", "1")
			d.waitLog(t, time.Second, "scoped range closed", "kind", "reload")
			time.Sleep(200 * time.Millisecond)
			if got := bannerFrom(ns("client"), "", server4, rangePort); got != "" {
				t.Errorf("the live session still reaches the range after the reload: %q", got)
			}
			if err := ftpsTransfers()[0].run(t); err == nil {
				t.Errorf("a new FTPS session still worked through the removed range")
			}
		})
	}
}

// TestConfigReloadControlPorts: a control port added on reload is
// watched at once (inline rules replaced in the kernel), one removed is
// no longer: its session ends and its pinholes close.
func TestConfigReloadControlPorts(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	conf := filepath.Join(t.TempDir(), "ftpgate.toml")
	write := func(text string) {
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("control-ports = [21]\n")
	d := startFtpgate(t, "--config", conf)
	passive2131 := curl("curl PASV on 2131", "ftp://"+server4+":2131/file.bin", "--ftp-pasv", "--disable-epsv")
	if err := passive2131.run(t); err == nil {
		t.Fatal("a transfer on 2131 worked before 2131 was a control port")
	}
	write("control-ports = [21, 2131]\n")
	_ = d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitLog(t, 5*time.Second, "configuration reloaded", "changed", "control-ports=21,2131")
	if err := passive2131.run(t); err != nil {
		t.Fatalf("after adding 2131 on reload: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	hold := inNS(ctx, "client", "python3", "ftpclient.py", "hold", server4+":2131", "PASV", "6")
	out := startPiped(t, hold)
	defer hold.Wait()
	bufio.NewReader(out).ReadString('\n')
	if p := waitPinholes(t, 1, 2*time.Second); len(p) != 1 {
		t.Fatalf("pinholes %v", p)
	}
	write("control-ports = [21]\n")
	_ = d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitLog(t, 5*time.Second, "configuration reloaded", "sessions_ended", "1")
	waitNoPinholes(t, 2*time.Second)
}
