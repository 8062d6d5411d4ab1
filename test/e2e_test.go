package test

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	server4 = "198.51.100.20"
	server6 = "2001:db8:2::20"
	gw4     = "192.0.2.1" // vsftpd on the gateway itself
	gw6     = "2001:db8:1::1"
)

// everyMode is the transfer matrix: curl in every mode and family, lftp
// and ftplib in active and passive mode, and a server on the gateway.
func everyMode() []transfer {
	return []transfer{
		curl("curl PASV v4", "ftp://"+server4+"/file.bin", "--ftp-pasv", "--disable-epsv"),
		curl("curl EPSV v4", "ftp://"+server4+"/file.bin", "--ftp-pasv"),
		curl("curl PORT v4", "ftp://"+server4+"/file.bin", "--ftp-port", "-", "--disable-eprt"),
		curl("curl EPRT v4", "ftp://"+server4+"/file.bin", "--ftp-port", "-"),
		curl("curl EPSV v6", "ftp://["+server6+"]/file.bin", "--ftp-pasv"),
		curl("curl EPRT v6", "ftp://["+server6+"]/file.bin", "--ftp-port", "-"),
		curl("curl PASV gateway host", "ftp://"+gw4+"/file.bin", "--ftp-pasv", "--disable-epsv"),
		curl("curl PORT gateway host", "ftp://"+gw4+"/file.bin", "--ftp-port", "-", "--disable-eprt"),
		curl("curl EPSV v6 gateway host", "ftp://["+gw6+"]/file.bin", "--ftp-pasv"),
		curl("curl EPRT v6 gateway host", "ftp://["+gw6+"]/file.bin", "--ftp-port", "-"),
		lftp("lftp passive v4", server4, true),
		lftp("lftp active v4", server4, false),
		ftplib("ftplib PASV v4", server4, "pasv"),
		ftplib("ftplib EPSV v4", server4, "epsv"),
		ftplib("ftplib PORT v4", server4, "port"),
		ftplib("ftplib EPRT v4", server4, "eprt"),
		ftplib("ftplib EPSV v6", server6, "epsv"),
		ftplib("ftplib EPRT v6", server6, "eprt"),
	}
}

// TestTransfersFailWithoutFtpgate is the control experiment: the same
// ruleset, with the line for ftpgate's mark, but no daemon. Every data
// connection must be dropped by the gateway.
func TestTransfersFailWithoutFtpgate(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	before := droppedSYNs(t, "dropped_syn") + droppedSYNs(t, "dropped_syn_input")
	for name, err := range runAll(t, everyMode()) {
		// Active mode from the FTP server on the gateway host opens an
		// outgoing connection, which the admin's output policy (accept)
		// allows anyway; its replies are established traffic.
		if strings.Contains(name, "gateway host") && (strings.Contains(name, "PORT") || strings.Contains(name, "EPRT")) {
			continue
		}
		if err == nil {
			t.Errorf("%s: succeeded without ftpgate; the lab's firewall lets data connections through", name)
		}
	}
	if after := droppedSYNs(t, "dropped_syn") + droppedSYNs(t, "dropped_syn_input"); after <= before {
		t.Errorf("the gateway dropped no data SYN (%d -> %d): the failures have another cause", before, after)
	}
}

// TestTransfersEveryMode runs the whole matrix through ftpgate, then
// checks the logs and that no pinhole is left.
func TestTransfersEveryMode(t *testing.T) {
	for _, capture := range []string{"inline", "passive"} {
		t.Run(capture, func(t *testing.T) { testTransfersEveryMode(t, capture) })
	}
}

func testTransfersEveryMode(t *testing.T, capture string) {
	needLab(t)
	setRuleset(t, "ftpgate")
	d := startFtpgate(t, "--capture", capture)
	xs := everyMode()
	errs := runAll(t, xs)
	names := make([]string, 0, len(errs))
	for n := range errs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if errs[n] != nil {
			t.Errorf("%s: %v", n, errs[n])
		}
	}
	for _, cmd := range []string{"PASV", "EPSV", "PORT", "EPRT"} {
		if len(d.find("channel open", "command", cmd)) == 0 {
			t.Errorf("no 'channel open' log for %s", cmd)
		}
	}
	// Every session ends and every pinhole closes.
	deadline := time.Now().Add(10 * time.Second)
	for len(d.find("session end")) < len(xs) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if n := len(d.find("session end")); n < len(xs) {
		t.Errorf("%d sessions ended, want %d", n, len(xs))
	}
	waitNoPinholes(t, 5*time.Second)
	// Close log lines wait up to 2s for a late kernel usage report.
	opened := len(d.find("channel open"))
	for deadline := time.Now().Add(6 * time.Second); len(d.find("channel closed")) < opened && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
	}
	closed := len(d.find("channel closed"))
	if opened < len(xs) || closed != opened {
		t.Errorf("%d channels opened, %d closed; want at least %d opened, all closed", opened, closed, len(xs))
	}
	// Every data connection that needed its pinhole consumed it. Active
	// mode from the gateway host itself goes out through the admin's
	// output policy (accept) and need not wait for its pinhole.
	needed := 0
	for _, x := range xs {
		if !(strings.Contains(x.name, "gateway host") && (strings.Contains(x.name, "PORT") || strings.Contains(x.name, "EPRT"))) {
			needed++
		}
	}
	if n := len(d.find("channel closed", "reason", "data connection started")); n < needed {
		t.Errorf("%d channels closed because their connection started, want at least %d", n, needed)
	}
	if r := d.find("channel refused"); len(r) != 0 {
		t.Errorf("refusals in ordinary transfers: %v", r)
	}
}

// TestUnannouncedPortRefused listens on a server port nobody announced
// and on the client, and requires both connections to be dropped while
// ftpgate runs and FTP works.
func TestUnannouncedPortRefused(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	startFtpgate(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	listen := func(role, addr string) {
		cmd := inNS(ctx, role, "python3", "-c",
			"import socket,sys,time\ns=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)\ns.bind((sys.argv[1],40500))\ns.listen()\ntime.sleep(30)", addr)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
	}
	listen("server", server4)
	listen("client", "192.0.2.10")
	time.Sleep(300 * time.Millisecond)
	// A pinhole for a real transfer is open meanwhile for another port.
	hold := inNS(ctx, "client", "python3", "ftpclient.py", "hold", server4, "PASV", "3")
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	dial := func(role, addr string) error {
		return inNS(ctx, role, "python3", "-c",
			"import socket,sys\nsocket.create_connection((sys.argv[1],40500),timeout=2).close()", addr).Run()
	}
	if err := dial("client", server4); err == nil {
		t.Errorf("client reached %s:40500, a port nobody announced", server4)
	}
	if err := dial("server", "192.0.2.10"); err == nil {
		t.Errorf("server reached 192.0.2.10:40500, a port nobody announced")
	}
	_ = hold.Wait()
}

// TestPinholeLifecycle holds sessions open without connecting and
// watches the pinholes in the kernel: key and timeout as announced,
// superseded by the next PASV, gone at QUIT, gone after the timeout.
func TestPinholeLifecycle(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	d := startFtpgate(t, "--pinhole-timeout", "3s")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// Superseded, then closed at QUIT.
	raw := inNS(ctx, "client", "python3", "ftpclient.py", "raw", server4, "2", "PASV", "PASV")
	out := startPiped(t, raw)
	sc := bufio.NewScanner(out)
	var replies []string
	for len(replies) < 2 && sc.Scan() {
		replies = append(replies, sc.Text())
	}
	if len(replies) < 2 {
		t.Fatalf("replies: %v", replies)
	}
	var h [4]int
	var p1, p2 int
	if _, err := fmt.Sscanf(replies[1][strings.Index(replies[1], "(")+1:], "%d,%d,%d,%d,%d,%d", &h[0], &h[1], &h[2], &h[3], &p1, &p2); err != nil {
		t.Fatalf("second reply %q: %v", replies[1], err)
	}
	want := fmt.Sprintf("192.0.2.10 . 198.51.100.20 . %d limit rate 1/week burst 1 packets timeout 3s", p1*256+p2)
	deadline := time.Now().Add(2 * time.Second)
	var p []string
	for {
		p = pinholes(t)
		if len(p) == 1 && strings.HasPrefix(p[0], want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(p) != 1 || !strings.HasPrefix(p[0], want) {
		t.Errorf("pinholes = %v, want only the second PASV's: %q", p, want)
	}
	_ = raw.Wait()
	waitNoPinholes(t, 2*time.Second)
	d.waitLog(t, 5*time.Second, "channel closed", "reason", "superseded by a new data command")
	d.waitLog(t, 5*time.Second, "channel closed", "reason", "session quit")

	// Never used: the kernel's timeout removes it while the session lasts.
	hold := inNS(ctx, "client", "python3", "ftpclient.py", "hold", server4, "PASV", "6")
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	if p := waitPinholes(t, 1, 3*time.Second); len(p) != 1 {
		t.Fatalf("held PASV: pinholes = %v, want one", p)
	}
	waitNoPinholes(t, 4*time.Second)
	d.waitLog(t, 5*time.Second, "channel closed", "reason", "timeout")
	_ = hold.Wait()
}

// TestRefusalsLogged sends a bounce PORT (to the server's own port 80)
// and an unsolicited EPRT for another host; vsftpd refuses both, and
// ftpgate must log each refusal with its reason and open nothing.
func TestRefusalsLogged(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	d := startFtpgate(t)
	out, err := inNS(context.Background(), "client", "python3", "ftpclient.py", "raw", server4, "0",
		"PORT 198,51,100,20,0,80", "EPRT |1|203.0.113.5|40000|").CombinedOutput()
	if err != nil {
		t.Fatalf("ftpclient: %v %s", err, out)
	}
	d.waitLog(t, 3*time.Second, "channel refused", "command", "PORT", "resp_h", "198.51.100.20", "resp_p", "80")
	d.waitLog(t, 3*time.Second, "channel refused", "command", "EPRT", "resp_h", "203.0.113.5")
	if n := len(d.find("channel open")); n != 0 {
		t.Errorf("%d channels opened, want none", n)
	}
}

// TestSessionAlreadyRunning logs in before ftpgate starts and transfers
// after: the session is picked up at its next line.
func TestSessionAlreadyRunning(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	x := transfer{name: "late", argv: []string{"python3", "ftpclient.py", "get", server4, "pasv", "file.bin", "OUT", "3"}}
	errc := make(chan error, 1)
	go func() { errc <- x.run(t) }()
	time.Sleep(500 * time.Millisecond)
	d := startFtpgate(t)
	if err := <-errc; err != nil {
		t.Fatalf("transfer on a session older than the daemon: %v", err)
	}
	d.waitLog(t, 2*time.Second, "channel open", "command", "PASV")
}

// TestStopRemovesTable checks SIGTERM (exit 0) and SIGKILL: either way,
// the table and every pinhole in it are gone.
func TestStopRemovesTable(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			d := startFtpgate(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			hold := inNS(ctx, "client", "python3", "ftpclient.py", "hold", server4, "PASV", "5")
			if err := hold.Start(); err != nil {
				t.Fatal(err)
			}
			d.waitLog(t, 3*time.Second, "channel open")
			if p := waitPinholes(t, 1, 2*time.Second); len(p) != 1 {
				t.Fatalf("want one pinhole before the signal, have %v", p)
			}
			if sig == syscall.SIGTERM {
				d.stop(t)
			} else {
				_ = d.cmd.Process.Kill()
				<-d.done
			}
			deadline := time.Now().Add(3 * time.Second)
			for tableExists(t) && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			if tableExists(t) {
				t.Errorf("table inet ftpgate still present after %v", sig)
			}
		})
	}
}

// TestRefusesToRunBlind runs ftpgate without privileges: it must exit 1
// with a message saying it cannot program nftables, not run blind.
func TestRefusesToRunBlind(t *testing.T) {
	needLab(t)
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", bin, "run")
	out, err := cmd.CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 1 {
		t.Fatalf("unprivileged ftpgate run: %v, want exit status 1\n%s", err, out)
	}
	if !strings.Contains(string(out), "cannot program nftables") || !strings.Contains(string(out), "will not run blind") {
		t.Errorf("message does not explain:\n%s", out)
	}
}

// TestUnknownInterface names an interface that does not exist: ftpgate
// must say so, exit 1, and leave no table behind.
func TestUnknownInterface(t *testing.T) {
	needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := inNS(ctx, "gw", bin, "run", "--capture", "passive", "--interface", "nosuch0").CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), `interface "nosuch0"`) {
		t.Fatalf("ftpgate run --interface nosuch0: %v\n%s", err, out)
	}
	if tableExists(t) {
		t.Errorf("table inet ftpgate left behind after a failed start")
	}
}

// TestNoRetransmittedSYNInline makes a few hundred passive data
// connections, each opened the instant the 227 or 229 arrives, through
// ftpgate in inline mode, and requires that the gateway dropped none of
// their first SYNs: no connection waited for a retransmission.
func TestNoRetransmittedSYNInline(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	startFtpgate(t, "--capture", "inline")
	before := droppedSYNs(t, "dropped_syn")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	runs := []struct{ host, mode string }{{server4, "pasv"}, {server4, "epsv"}, {server6, "epsv"}}
	errc := make(chan error, len(runs))
	for _, r := range runs {
		go func() {
			out, err := inNS(ctx, "client", "python3", "ftpclient.py", "load", r.host, r.mode, "empty.txt", "100").CombinedOutput()
			if err != nil {
				err = fmt.Errorf("%s %s: %v: %s", r.host, r.mode, err, out)
			}
			errc <- err
		}()
	}
	for range runs {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
	if after := droppedSYNs(t, "dropped_syn"); after != before {
		t.Errorf("the gateway dropped %d SYNs during 300 immediate passive connections; want 0", after-before)
	}
}

// TestInlineFailsOpen kills an inline ftpgate: FTP control connections
// must keep working (the queue is bypassed and the table is gone).
func TestInlineFailsOpen(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	d := startFtpgate(t, "--capture", "inline")
	_ = d.cmd.Process.Kill()
	<-d.done
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := inNS(ctx, "client", "python3", "ftpclient.py", "raw", server4, "0", "PWD").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "257") {
		t.Fatalf("control connection after ftpgate died: %v\n%s", err, out)
	}
}

// TestKernelCheckAtStart: `ftpgate kernel` and the check `ftpgate run`
// makes before it builds its table agree. On a kernel that has what a
// run needs, the run logs which path each part takes; on one that lacks
// something (Debian 11's 5.10 in test/vm), the run exits 1 with one
// line naming the feature and the Linux version that has it, and leaves
// no table behind, not even the probe's.
func TestKernelCheckAtStart(t *testing.T) {
	needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(20*slow)*time.Second)
	defer cancel()
	report, kerr := inNS(ctx, "gw", bin, "kernel").Output()
	t.Logf("ftpgate kernel:\n%s", report)
	if !strings.HasPrefix(string(report), "kernel ") {
		t.Fatalf("ftpgate kernel: %v, output does not start with the kernel:\n%s", kerr, report)
	}
	release := strings.TrimSpace(strings.SplitN(string(report), "\n", 2)[0][len("kernel "):])
	if kerr == nil {
		// The default run can run here: it says how.
		setRuleset(t, "ftpgate")
		d := startFtpgate(t)
		r := d.waitLog(t, 5*time.Second, "kernel")
		if r["release"] != release || r["hold"] == nil || r["features"] == nil {
			t.Errorf("start-up log line %v does not say the release %q, the features and how packets are held", r, release)
		}
		wantHold := "nft queue"
		if strings.Contains(string(report), "xtables NFQUEUE target)") {
			wantHold = "xtables NFQUEUE target (no nft queue)"
		}
		if r["hold"] != wantHold {
			t.Errorf("run holds packets with %v; ftpgate kernel said %q", r["hold"], wantHold)
		}
		return
	}
	ee, ok := kerr.(*exec.ExitError)
	if !ok || ee.ExitCode() != 1 {
		t.Fatalf("ftpgate kernel: %v, want exit status 0 or 1", kerr)
	}
	out, err := inNS(ctx, "gw", bin, "run").CombinedOutput()
	ee, ok = err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 1 {
		t.Fatalf("ftpgate run on a kernel that lacks a feature: %v, want exit status 1\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	want := "ftpgate run: kernel " + release + ": the kernel lacks a feature ftpgate needs: "
	if len(lines) != 1 || !strings.HasPrefix(lines[0], want) || !strings.Contains(lines[0], " or later") {
		t.Errorf("ftpgate run said\n%s\nwant one line starting %q and naming the Linux version", out, want)
	}
	if listing := nft(t, "list", "tables"); strings.Contains(listing, "ftpgate") {
		t.Errorf("a table is left behind after the refused start:\n%s", listing)
	}
}
