package test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

const ftpsRange = "41000-41999" // the lab's FTPS servers' passive range

// ftpsArgs run ftpgate for the lab's FTPS servers.
var ftpsArgs = []string{"--ftps-passive-ports", server4 + "=" + ftpsRange, "--control-ports", "21,2141,2142"}

func lftpTLS(name, url, extra string) transfer {
	script := "set ftp:ssl-force true; set ftp:ssl-allow-anonymous true; set ssl:verify-certificate no; " + extra +
		"set net:max-retries 1; set net:timeout 4; set net:reconnect-interval-base 1; set xfer:clobber on; get file.bin -o OUT; bye"
	return transfer{name: name, argv: []string{"lftp", "-e", script, url}}
}

// ftpsTransfers: explicit FTPS (AUTH TLS) with curl, lftp and Python's
// FTP_TLS, implicit FTPS on 990 with curl; data connections encrypted.
func ftpsTransfers() []transfer {
	return []transfer{
		curl("curl explicit FTPS", "ftp://"+server4+":2141/file.bin", "--ssl-reqd", "--insecure"),
		curl("curl explicit FTPS PASV", "ftp://"+server4+":2141/file.bin", "--ssl-reqd", "--insecure", "--disable-epsv"),
		curl("curl implicit FTPS", "ftps://"+server4+":990/file.bin", "--insecure"),
		lftpTLS("lftp explicit FTPS", "ftp://"+server4+":2141", ""),
		{name: "ftplib FTP_TLS", argv: []string{"python3", "ftpclient.py", "tlsget", server4 + ":2141", "file.bin", "OUT"}},
	}
}

// TestFTPSFailsWithoutFtpgate: encrypted sessions through the lab's
// default-drop gateway fail with the documented line alone and through
// the kernel's helper, which cannot read the 227 either.
func TestFTPSFailsWithoutFtpgate(t *testing.T) {
	needLab(t)
	for _, rs := range []string{"ftpgate", "kernel"} {
		setRuleset(t, rs)
		for name, err := range runAll(t, ftpsTransfers()) {
			if err == nil {
				t.Errorf("%s worked with ruleset %q and no ftpgate", name, rs)
			}
		}
	}
	setRuleset(t, "ftpgate")
}

// TestFTPSThroughFtpgate: every FTPS client works through ftpgate with
// the server's passive range configured, each session getting a scoped
// range that closes with it.
func TestFTPSThroughFtpgate(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	d := startFtpgate(t, ftpsArgs...)
	before := droppedSYNs(t, "dropped_syn")
	xs := ftpsTransfers()
	for name, err := range runAll(t, xs) {
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if after := droppedSYNs(t, "dropped_syn"); after != before {
		t.Errorf("the gateway dropped %d SYNs during the FTPS transfers", after-before)
	}
	if n := len(d.find("scoped range open", "ports", ftpsRange)); n != len(xs) {
		t.Errorf("%d scoped ranges opened for %d sessions", n, len(xs))
	}
	if n := len(d.find("scoped range open", "why", "implicit FTPS: the TLS handshake completed")); n != 1 {
		t.Errorf("%d implicit sessions opened a range on their handshake, want 1", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(d.find("scoped range closed")) < len(xs) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if n := len(d.find("scoped range closed")); n != len(xs) {
		t.Errorf("%d scoped ranges closed, want %d", n, len(xs))
	}
	if left := scopedElements(t); left != "" {
		t.Errorf("scoped ranges left in the kernel: %s", left)
	}
}

// TestFTPSWithoutRangeSaysHow: without a range for the server, an
// encrypted session gets nothing, and the log says what to configure.
func TestFTPSWithoutRangeSaysHow(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	d := startFtpgate(t, "--control-ports", "21,2141")
	if err := ftpsTransfers()[0].run(t); err == nil {
		t.Error("FTPS worked without a passive range for its server")
	}
	r := d.waitLog(t, 5*time.Second, "session encrypted: its announcements are hidden and no passive range is configured for its server, so its data connections will be dropped")
	if fmt.Sprint(r["configure"]) != "--ftps-passive-ports "+server4+"=LO-HI (the server's passive range)" {
		t.Errorf("the log does not say what to configure: %v", r)
	}
}

func scopedElements(t *testing.T) string {
	t.Helper()
	var out []string
	for _, set := range []string{"ftps_ranges_v4", "ftps_ranges_v6", "ftps_active_v4"} {
		text := nft(t, "list", "set", "inet", "ftpgate", set)
		if i := strings.Index(text, "elements = {"); i >= 0 {
			out = append(out, set+": "+strings.Join(strings.Fields(text[i:]), " "))
		}
	}
	return strings.Join(out, "; ")
}

// probeFrom connects from a client-side address to the server and says
// how the gateway answered: "open" or "refused" (the SYN got through to
// the server) or "dropped" (it did not).
func probeFrom(t *testing.T, from string, port int) string {
	t.Helper()
	script := fmt.Sprintf(`import socket
s=socket.socket(); s.bind((%q,0)); s.settimeout(1.5)
try:
    s.connect((%q,%d)); print("open")
except ConnectionRefusedError: print("refused")
except OSError: print("dropped")`, from, server4, port)
	out, _ := inNS(context.Background(), "client", "python3", "-c", script).CombinedOutput()
	return strings.TrimSpace(string(out))
}

// TestFTPSScopedToSession: while an FTPS session holds its range, its
// client reaches the server's passive ports and another client host does
// not; once the session ends, neither does its own client.
func TestFTPSScopedToSession(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	d := startFtpgate(t, ftpsArgs...)
	if out, err := exec.Command("ip", "-n", ns("client"), "addr", "replace", "192.0.2.11/24", "dev", lab+"-c0").CombinedOutput(); err != nil {
		t.Fatalf("second client address: %v %s", err, out)
	}
	defer exec.Command("ip", "-n", ns("client"), "addr", "del", "192.0.2.11/24", "dev", lab+"-c0").Run()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	hold := inNS(ctx, "client", "python3", "ftpclient.py", "tlshold", server4+":2141", "5")
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	d.waitLog(t, 5*time.Second, "scoped range open", "ports", ftpsRange)
	time.Sleep(200 * time.Millisecond)
	// 41999: in the range, with nothing listening: a SYN that gets
	// through is refused by the server.
	if got := probeFrom(t, "192.0.2.11", 41999); got != "dropped" {
		t.Errorf("another client host during the session: %s, want dropped", got)
	}
	if got := probeFrom(t, "192.0.2.10", 41999); got != "refused" {
		t.Errorf("the session's client during the session: %s, want refused by the server (let through)", got)
	}
	if got := probeFrom(t, "192.0.2.10", 42000); got != "dropped" {
		t.Errorf("the session's client outside the range: %s, want dropped", got)
	}
	hold.Wait()
	d.waitLog(t, 5*time.Second, "scoped range closed")
	time.Sleep(200 * time.Millisecond)
	if got := probeFrom(t, "192.0.2.10", 41999); got != "dropped" {
		t.Errorf("the client after its session ended: %s, want dropped", got)
	}
}

// TestFTPSCCC: after an accepted CCC the session is read again: its
// scoped range closes and exact pinholes take over.
func TestFTPSCCC(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	d := startFtpgate(t, ftpsArgs...)
	x := lftpTLS("lftp CCC", "ftp://"+server4+":2142", "set ftp:ssl-use-ccc yes; set ftp:ssl-protect-data no; ")
	// Two transfers on one session: the second surely after the range
	// closed in the kernel.
	x.argv[2] = strings.Replace(x.argv[2], "get file.bin -o OUT;", "get file.bin -o OUT; get file.bin -o OUT;", 1)
	if err := x.run(t); err != nil {
		t.Fatal(err)
	}
	d.waitLog(t, 5*time.Second, "scoped range closed", "reason", "the session left TLS (CCC): exact pinholes again")
	if n := len(d.find("channel open", "command", "PASV")); n != 2 {
		t.Errorf("%d exact pinholes after CCC, want 2", n)
	}
	d.waitLog(t, 5*time.Second, "channel closed", "reason", "data connection started")
}

// TestFTPSLoad: many concurrent FTPS sessions from several client hosts
// (FTPS_LOAD_HOSTS hosts, two sessions each, FTPS_LOAD_TRANSFERS
// transfers per session; 8 and 10 by default) through ftpgate: none
// fails, no data SYN is dropped, and every scoped range is gone after.
// With FTPS_LOAD_STATIC=1 the same load runs without ftpgate through a
// ruleset that opens the passive range to everyone, the comparison in
// docs/PERFORMANCE.md.
func TestFTPSLoad(t *testing.T) {
	needLab(t)
	static := os.Getenv("FTPS_LOAD_STATIC") == "1"
	if static {
		setRuleset(t, "ftps-static")
		defer setRuleset(t, "ftpgate")
	} else {
		setRuleset(t, "ftpgate")
	}
	hosts, transfers := envInt("FTPS_LOAD_HOSTS", 8), envInt("FTPS_LOAD_TRANSFERS", 10)
	var addrs []string
	for i := range hosts {
		a := fmt.Sprintf("192.0.2.%d", 100+i)
		if out, err := exec.Command("ip", "-n", ns("client"), "addr", "replace", a+"/24", "dev", lab+"-c0").CombinedOutput(); err != nil {
			t.Fatalf("%s: %v %s", a, err, out)
		}
		addrs = append(addrs, a)
		defer exec.Command("ip", "-n", ns("client"), "addr", "del", a+"/24", "dev", lab+"-c0").Run()
	}
	var d *daemon
	if !static {
		d = startFtpgate(t, append(ftpsArgs, "--status-socket", t.TempDir()+"/status.sock")...)
	}
	before := droppedSYNs(t, "dropped_syn")
	start := time.Now()
	type result struct {
		ok  int
		err error
	}
	results := make(chan result, 2*hosts)
	for _, a := range addrs {
		for range 2 {
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
				defer cancel()
				// From the host's address: ftplib binds the control
				// connection to it, and the data connections follow.
				out, err := inNS(ctx, "client", "python3", "ftpclient.py", "tlsload", server4+":2141", "file.bin",
					strconv.Itoa(transfers), a).CombinedOutput()
				var n int
				fmt.Sscan(lastLine(string(out)), &n)
				if err != nil {
					err = fmt.Errorf("%v: %s", err, out)
				}
				results <- result{n, err}
			}()
		}
	}
	total := 0
	for range 2 * hosts {
		r := <-results
		if r.err != nil {
			t.Error(r.err)
		}
		total += r.ok
	}
	elapsed := time.Since(start)
	want := 2 * hosts * transfers
	if total != want {
		t.Errorf("%d of %d FTPS transfers succeeded", total, want)
	}
	if after := droppedSYNs(t, "dropped_syn"); after != before {
		t.Errorf("the gateway dropped %d SYNs under the load", after-before)
	}
	t.Logf("%d FTPS sessions from %d hosts, %d transfers in %v (%.0f/s)",
		2*hosts, hosts, total, elapsed.Round(time.Millisecond), float64(total)/elapsed.Seconds())
	if static {
		return
	}
	t.Logf("ftpgate: %s", processCost(d.cmd.Process.Pid))
	opened := len(d.find("scoped range open"))
	t.Logf("%d scoped ranges opened", opened)
	if opened != 2*hosts {
		t.Errorf("%d scoped ranges opened for %d sessions", opened, 2*hosts)
	}
	deadline := time.Now().Add(5 * time.Second)
	for scopedElements(t) != "" && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if left := scopedElements(t); left != "" {
		t.Errorf("left after the load: %s", left)
	}
}

// processCost reads a process's CPU time and peak resident memory.
func processCost(pid int) string {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return err.Error()
	}
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
	var ut, st float64
	fmt.Sscan(f[11], &ut)
	fmt.Sscan(f[12], &st)
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	hwm := ""
	for _, l := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			hwm = strings.TrimSpace(l[6:])
		}
	}
	return fmt.Sprintf("CPU %.2f s (user %.2f, system %.2f), peak RSS %s", (ut+st)/100, ut/100, st/100, hwm)
}

func envInt(name string, def int) int {
	var n int
	if _, err := fmt.Sscan(os.Getenv(name), &n); err == nil && n > 0 {
		return n
	}
	return def
}
