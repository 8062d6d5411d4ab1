package test

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The hostile suite. Each test sends an attack through the lab, then
// tries, through the gateway, the connection the attack would allow, and
// requires it to be dropped. The attacker is test/forge, sending raw
// frames from a lab namespace; the firewall is real nftables, the server
// real vsftpd.

const (
	client4 = "192.0.2.10"
	client6 = "2001:db8:1::10"
	// The port a forged or refused PORT announces on the client (3389),
	// and the one a forged 227/229 announces on the server.
	clientPort = 13*256 + 61
	serverPort = 2222
)

// hostileArgs starts ftpgate watching the lab's three control ports: 21,
// the vsftpd on 2131 that refuses every PORT, and a scripted server on
// 2132.
var hostileArgs = []string{"--control-ports", "21,2131,2132"}

// gwMAC is the gateway's MAC address on the side facing role.
func gwMAC(t *testing.T, role string) string {
	t.Helper()
	iface := lab + "-g0"
	if role == "server" {
		iface = lab + "-g1"
	}
	out, err := inNS(context.Background(), "gw", "cat", "/sys/class/net/"+iface+"/address").Output()
	if err != nil {
		t.Fatalf("MAC of %s: %v", iface, err)
	}
	return strings.TrimSpace(string(out))
}

// wireArgs are the attacker's flags for sending from role's interface.
func wireArgs(t *testing.T, role string) []string {
	dev := lab + "-c0"
	if role == "server" {
		dev = lab + "-s0"
	}
	return []string{"-dev", dev, "-gwmac", gwMAC(t, role)}
}

// forge runs the attacker in role's namespace and returns its output.
func forge(t *testing.T, role, cmd string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	argv := append([]string{forgeBin, cmd}, append(wireArgs(t, role), args...)...)
	out, err := inNS(ctx, role, argv...).CombinedOutput()
	if err != nil {
		t.Fatalf("forge %s: %v\n%s", cmd, err, out)
	}
	return string(out)
}

// startReady starts cmd and waits for the first line it prints, which
// says it is ready.
func startReady(t *testing.T, cmd *exec.Cmd, what string) {
	t.Helper()
	out := startPiped(t, cmd)
	if !bufio.NewScanner(out).Scan() {
		t.Fatalf("%s did not start", what)
	}
}

// listenOn keeps a listener on addr:port in role's namespace for the
// rest of the test.
func listenOn(t *testing.T, role, addr string, port int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	cmd := inNS(ctx, role, "python3", "-c", `import socket,sys,time
s=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(128)
print('ok', flush=True)
time.sleep(120)`, addr, strconv.Itoa(port))
	startReady(t, cmd, fmt.Sprintf("the listener on %s:%d", addr, port))
}

// reaches reports whether role can open a TCP connection to addr:port
// through the gateway within two seconds.
func reaches(role, addr string, port int) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return inNS(ctx, role, "python3", "-c",
		"import socket,sys\nsocket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=2).close()",
		addr, strconv.Itoa(port)).Run() == nil
}

// blockPort drops, in role's namespace, the TCP traffic of one local port
// before its stack sees it: forged segments with good checksums must not
// draw answers from the real hosts.
func blockPort(t *testing.T, role string, port int) {
	t.Helper()
	run := func(args ...string) {
		if out, err := inNS(context.Background(), role, append([]string{"nft"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("nft %v: %v %s", args, err, out)
		}
	}
	run("add", "table", "inet", "hostile")
	run("add", "chain", "inet", "hostile", "pre", "{ type filter hook prerouting priority -300; }")
	run("add", "rule", "inet", "hostile", "pre", "tcp", "sport", strconv.Itoa(port), "drop")
	run("add", "rule", "inet", "hostile", "pre", "tcp", "dport", strconv.Itoa(port), "drop")
	t.Cleanup(func() { _ = inNS(context.Background(), role, "nft", "delete", "table", "inet", "hostile").Run() })
}

// noOpening requires that ftpgate opened nothing.
func noOpening(t *testing.T, d *daemon) {
	t.Helper()
	if r := d.find("channel open"); len(r) != 0 {
		t.Errorf("ftpgate opened %d channels: %v", len(r), r)
	}
}

// TestHostileForgedExchange forges whole FTP exchanges, both halves, from
// a host attached to the gateway. With bad checksums, no endpoint took a
// byte of them; with good ones, the half that claims the other side's
// address came in on the wrong interface. Either way nothing may open,
// also when the admin's ruleset lets every control segment through
// ("loose"), so that only ftpgate's own checks stand.
func TestHostileForgedExchange(t *testing.T) {
	needLab(t)
	type attack struct {
		name, attacker, mode, client, server string
		goodSum                              bool
		// the connection the forged exchange would allow
		from, to string
		port     int
	}
	attacks := []attack{
		{"bad checksums, PASV and 227 from the client side", "client", "pasv", client4, server4, false, "client", server4, serverPort},
		{"bad checksums, EPSV and 229 over IPv6", "client", "epsv", client6, server6, false, "client", server6, serverPort},
		{"bad checksums, PORT and 200 from outside", "server", "port", client4, server4, false, "server", client4, clientPort},
		{"good checksums, 227 spoofed from the client side", "client", "pasv", client4, server4, true, "client", server4, serverPort},
		{"good checksums, 229 spoofed from the client side over IPv6", "client", "epsv", client6, server6, true, "client", server6, serverPort},
		{"good checksums, PORT spoofed from outside", "server", "port", client4, server4, true, "server", client4, clientPort},
	}
	for _, ruleset := range []string{"ftpgate", "loose"} {
		for _, a := range attacks {
			t.Run(ruleset+"/"+a.name, func(t *testing.T) {
				setRuleset(t, ruleset)
				d := startFtpgate(t, hostileArgs...)
				target := "server"
				if a.to == client4 {
					target = "client"
				}
				listenOn(t, target, a.to, a.port)
				if a.goodSum {
					// The real hosts must not answer the forged segments.
					blockPort(t, "client", 40123)
					blockPort(t, "server", 40123)
				}
				args := []string{"-client", a.client, "-server", a.server, "-mode", a.mode, "-data-port", strconv.Itoa(a.port)}
				if a.goodSum {
					args = append(args, "-good-sum")
				}
				forge(t, a.attacker, "exchange", args...)
				time.Sleep(300 * time.Millisecond) // past the commit delay
				if reaches(a.from, a.to, a.port) {
					t.Errorf("after the forged exchange, %s reached %s port %d through the gateway", a.from, a.to, a.port)
				}
				noOpening(t, d)
			})
		}
	}
}

// forgeSession runs forge's real FTP session with an injection.
func forgeSession(t *testing.T, server string, args ...string) string {
	t.Helper()
	return forge(t, "client", "session", append([]string{"-server", server}, args...)...)
}

// forgeSessionUntil starts forge's real FTP session in the background and
// returns what it printed up to the line mark, which its commands print
// with "@mark=": the session is still open then.
func forgeSessionUntil(t *testing.T, server, mark string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	argv := append([]string{forgeBin, "session"}, wireArgs(t, "client")...)
	cmd := inNS(ctx, "client", append(append(argv, "-server", server), args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	var seen strings.Builder
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if sc.Text() == mark {
			return seen.String()
		}
		seen.WriteString(sc.Text() + "\n")
	}
	t.Fatalf("forge session ended before %q:\n%s%s", mark, seen.String(), stderr.String())
	return ""
}

// TestHostileInjections forges into real sessions, or sends what a
// careless helper would misread, and then tries the connection to the
// client's port 3389 from the server that the PORT asked for.
func TestHostileInjections(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	noops := strings.Repeat(`NOOP\n`, 64) + "PORT 192,0,2,10,13,61!"
	eprt6 := fmt.Sprintf("EPRT |2|%s|%d|", client6, clientPort)
	tests := []struct {
		name   string
		server string
		args   []string
		target string // the client address the announcement names
	}{
		// The server received NOOP at the forged PORT's sequence numbers.
		{"PORT with a bad checksum, then NOOP at the same sequence number", server4 + ":21",
			[]string{"-inject", "badsum-port", "USER anonymous", "@inject", "NOOP xxxxxxxxxxxxxxxx"}, ""},
		{"PORT 3 MB beyond the receive window, then real commands", server4 + ":21",
			[]string{"-inject", "window-port", "USER anonymous", "@inject", "@sleep=4s", "NOOP", "NOOP"}, ""},
		{"PORT sent before the greeting, refused with 530", server4 + ":21",
			[]string{"-prelude", `PORT 192,0,2,10,13,61\n`, "@replies=1"}, ""},
		{"64 pipelined NOOPs and a PORT the server refuses", server4 + ":2131",
			[]string{"USER anonymous", noops, "@replies=65"}, ""},
		{"plain-text PORT and 200 after an accepted AUTH TLS", server4 + ":2132",
			[]string{"AUTH TLS", "PORT 192,0,2,10,13,61"}, ""},
		{"IPv6: EPRT with a bad checksum, then NOOP at the same sequence number", "[" + server6 + "]:21",
			[]string{"-inject", "badsum-port", "-forged", eprt6, "USER anonymous", "@inject", "NOOP " + strings.Repeat("x", len(eprt6)-5)}, client6},
		{"IPv6: EPRT 3 MB beyond the receive window, then real commands", "[" + server6 + "]:21",
			[]string{"-inject", "window-port", "-forged", eprt6, "USER anonymous", "@inject", "@sleep=4s", "NOOP", "NOOP"}, client6},
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	startReady(t, inNS(ctx, "server", "python3", "ftpserver.py", server4, "2132"), "the scripted server")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := startFtpgate(t, hostileArgs...)
			target := tt.target
			if target == "" {
				target = client4
			}
			listenOn(t, "client", target, clientPort)
			// The session stays open while the connection is tried.
			args := append(tt.args, "@mark=attacked", "@sleep=6s")
			t.Logf("session:\n%s", forgeSessionUntil(t, tt.server, "attacked", args...))
			time.Sleep(300 * time.Millisecond) // past the commit delay
			if reaches("server", target, clientPort) {
				t.Errorf("the server reached %s port %d through the gateway", target, clientPort)
			}
			noOpening(t, d)
		})
	}
}

// TestHostileResets forges resets into a real session: one with a bad
// checksum, one with a good checksum but a random sequence number. The
// session's next transfer must still get its pinhole.
func TestHostileResets(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	pasv := regexp.MustCompile(`^227 .*\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)`)
	for _, kind := range []string{"badsum-rst", "random-rst"} {
		t.Run(kind, func(t *testing.T) {
			d := startFtpgate(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			argv := append([]string{forgeBin, "session"}, wireArgs(t, "client")...)
			argv = append(argv, "-server", server4+":21", "-inject", kind, "USER anonymous", "@inject", "PASV", "@sleep=4s")
			cmd := inNS(ctx, "client", argv...)
			out := startPiped(t, cmd)
			defer cmd.Wait()
			sc := bufio.NewScanner(out)
			port := 0
			for port == 0 && sc.Scan() {
				if m := pasv.FindStringSubmatch(sc.Text()); m != nil {
					hi, _ := strconv.Atoi(m[5])
					lo, _ := strconv.Atoi(m[6])
					port = hi*256 + lo
				}
			}
			if port == 0 {
				t.Fatal("no 227 reply in the session")
			}
			d.waitLog(t, 3*time.Second, "channel open", "resp_p", strconv.Itoa(port))
			if !reaches("client", server4, port) {
				t.Errorf("after a forged reset, the session's data connection to port %d was dropped", port)
			}
		})
	}
}

// TestHostileRaceTwoSYNs makes 100 pinholes and, for each, two SYNs from
// different source ports at once on two CPUs: exactly one connection per
// pinhole may reach the server. With the pinholes in the kernel, its
// consume rule decides; with the commit held back (--commit-delay), the
// SYNs are held and ftpgate decides.
func TestHostileRaceTwoSYNs(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	for _, tc := range []struct {
		name     string
		args     []string
		inKernel bool
	}{
		{"pinholes in the kernel", nil, true},
		{"SYNs held for ftpgate", []string{"--commit-delay", "30s"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			startFtpgate(t, tc.args...)
			const n = 100
			run := func(args ...string) string {
				out, err := inNS(context.Background(), "server", append([]string{"nft"}, args...)...).CombinedOutput()
				if err != nil {
					t.Fatalf("nft %v: %v %s", args, err, out)
				}
				return string(out)
			}
			run("add", "table", "inet", "race")
			run("add", "chain", "inet", "race", "pre", "{ type filter hook prerouting priority -300; }")
			run("add", "rule", "inet", "race", "pre", "tcp", "dport", "40000-40999", "tcp", "flags", "syn", "/", "syn,ack", "counter")
			defer run("delete", "table", "inet", "race")
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			hold := inNS(ctx, "client", "python3", "ftpclient.py", "holdmany", server4, strconv.Itoa(n), "20")
			out := startPiped(t, hold)
			var targets []string
			sc := bufio.NewScanner(out)
			for sc.Scan() && sc.Text() != "ready" {
				if p, ok := strings.CutPrefix(sc.Text(), "port "); ok {
					targets = append(targets, server4+":"+p)
				}
			}
			if len(targets) != n {
				t.Fatalf("%d sessions announced a port, want %d", len(targets), n)
			}
			if tc.inKernel {
				if p := waitPinholes(t, n, 5*time.Second); len(p) != n {
					t.Fatalf("%d pinholes in the kernel, want %d", len(p), n)
				}
			}
			// Both SYNs of a pinhole leave their CPUs at the same moment
			// and go through the gateway's forward hook side by side.
			at := strconv.FormatInt(time.Now().Add(500*time.Millisecond).UnixNano(), 10)
			var wg sync.WaitGroup
			for cpu := range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					argv := append([]string{"taskset", "-c", strconv.Itoa(cpu), forgeBin, "synrace"}, wireArgs(t, "client")...)
					argv = append(append(argv, "-src", client4, "-at", at, "-every", "2ms"), targets...)
					if b, err := inNS(context.Background(), "client", argv...).CombinedOutput(); err != nil {
						t.Errorf("racing SYNs on CPU %d: %v %s", cpu, err, b)
					}
				}()
			}
			wg.Wait()
			time.Sleep(500 * time.Millisecond)
			listing := run("list", "chain", "inet", "race", "pre")
			var syns int
			if i := strings.Index(listing, "packets "); i >= 0 {
				fmt.Sscanf(listing[i:], "packets %d", &syns)
			}
			if syns != n {
				t.Errorf("%d data SYNs reached the server through %d pinholes, two racing per pinhole; want exactly %d", syns, n, n)
			}
			cancel()
			_ = hold.Wait()
		})
	}
}

// TestHostileHalfOpenFlood keeps 1,200 control connections half-open
// (SYNs from addresses that never answer) while the session cap is 100:
// FTP must keep working.
func TestHostileHalfOpenFlood(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	startFtpgate(t, "--max-sessions", "100")
	forge(t, "client", "synflood", "-server", server4+":21", "-from", "192.0.2.128/25", "-n", "1200")
	time.Sleep(500 * time.Millisecond)
	for name, err := range runAll(t, []transfer{
		curl("curl PASV v4 during the flood", "ftp://"+server4+"/file.bin", "--ftp-pasv", "--disable-epsv"),
		curl("curl PORT v4 during the flood", "ftp://"+server4+"/file.bin", "--ftp-port", "-", "--disable-eprt"),
		ftplib("ftplib EPSV v6 during the flood", server6, "epsv"),
	}) {
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestHostileLogGrowth sends 100 KB of malformed PORT lines: the log
// grows by a bounded amount, and says how much it held back.
func TestHostileLogGrowth(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	d := startFtpgate(t)
	d.mu.Lock()
	before := d.raw.Len()
	d.mu.Unlock()
	junk := strings.Repeat(`PORT x\n`, 100*1024/8) + "!"
	forgeSession(t, server4+":21", "USER anonymous", junk, "@sleep=2s", "QUIT")
	d.waitLog(t, 5*time.Second, "session end")
	d.mu.Lock()
	grew := d.raw.Len() - before
	d.mu.Unlock()
	if grew > 16<<10 {
		t.Errorf("100 KB of malformed commands grew the log by %d bytes", grew)
	}
	if r := d.find("session end"); len(r) == 0 || r[0]["log_lines_suppressed"] == nil {
		t.Errorf("the session's end does not count the log lines held back: %v", r)
	}
}

// TestEPRTBehindIPv6DestinationOptions runs active mode over IPv6 with a
// destination options header on every control segment.
func TestEPRTBehindIPv6DestinationOptions(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	d := startFtpgate(t)
	x := transfer{name: "ftplib EPRT v6 with destination options",
		argv: []string{"env", "FTP_DSTOPTS=1", "python3", "ftpclient.py", "get", server6, "eprt", "file.bin", "OUT"}}
	if err := x.run(t); err != nil {
		t.Fatalf("%s: %v", x.name, err)
	}
	d.waitLog(t, 2*time.Second, "channel open", "command", "EPRT")
}

// TestLegitimateTransfersBesideAttacks runs real transfers while forged
// exchanges and injections go on next to them.
func TestLegitimateTransfersBesideAttacks(t *testing.T) {
	needLab(t)
	setRuleset(t, "loose")
	startFtpgate(t, hostileArgs...)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			mode := []string{"pasv", "epsv", "port"}[i%3]
			c, s := client4, server4
			if mode == "epsv" {
				c, s = client6, server6
			}
			argv := append([]string{forgeBin, "exchange"}, wireArgs(t, "client")...)
			argv = append(argv, "-client", c, "-server", s, "-mode", mode, "-client-port", strconv.Itoa(41000+i))
			_ = inNS(context.Background(), "client", argv...).Run()
		}
	}()
	errs := runAll(t, everyMode())
	close(stop)
	wg.Wait()
	for name, err := range errs {
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}
