package rules

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// newNetNS creates a throwaway network namespace and returns a handle to
// it; the calling goroutine stays in its own namespace. Skips unless root.
func newNetNS(t testing.TB) netns.NsHandle {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to create a network namespace and program nftables")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("netns.Get: %v", err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Fatalf("netns.New: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatalf("netns.Set: %v", err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// inNetNS runs f on a thread inside ns.
func inNetNS(t *testing.T, ns netns.NsHandle, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		// The thread is left locked on purpose: it ends with the goroutine
		// and is then discarded instead of returning to the pool in ns.
		if err := netns.Set(ns); err != nil {
			t.Errorf("netns.Set: %v", err)
			return
		}
		f()
	}()
	<-done
}

// nft runs the nft command inside ns and returns its output.
func nft(t *testing.T, ns netns.NsHandle, args ...string) string {
	t.Helper()
	var out []byte
	var err error
	inNetNS(t, ns, func() { out, err = exec.Command("nft", args...).CombinedOutput() })
	if err != nil {
		t.Fatalf("nft %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func openTest(t *testing.T, ns netns.NsHandle) *Nftables {
	t.Helper()
	n, err := Open(Config{Mark: 0x01000000, MarkMask: 0x01000000, MaxPinholes: 1024, NetNS: int(ns)})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

// openTestLogging is openTest with reports of used pinholes on NFLOG group.
func openTestLogging(t *testing.T, ns netns.NsHandle, group uint16) *Nftables {
	t.Helper()
	n, err := Open(Config{Mark: 0x01000000, MarkMask: 0x01000000, NetNS: int(ns), LogGroup: group})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

func TestOpenCreatesReadableTable(t *testing.T) {
	ns := newNetNS(t)
	openTest(t, ns)
	got := nft(t, ns, "list", "table", "inet", "ftpgate")
	// nft names the owning process on the first line; that varies.
	if i := strings.Index(got, " # progname"); i >= 0 {
		got = got[:i] + got[strings.IndexByte(got, '\n'):]
	}
	want := `table inet ftpgate {
	flags owner

	set ftp_data_pinholes_v4 {
		type ipv4_addr . ipv4_addr . inet_service
		size 1024
		flags dynamic,timeout
		limit rate 1/week burst 1 packets
		comment "announced FTP data connections: connecting peer . announced address . announced port"
	}

	set ftp_data_pinholes_v6 {
		type ipv6_addr . ipv6_addr . inet_service
		size 1024
		flags dynamic,timeout
		limit rate 1/week burst 1 packets
		comment "announced FTP data connections: connecting peer . announced address . announced port"
	}

	set ftp_control_peers_v4 {
		type ipv4_addr . ipv4_addr
		size 1024
		flags timeout
		comment "hosts of running FTP control sessions, both ways: a data SYN between them that finds no pinhole waits for ftpgate"
	}

	set ftp_control_peers_v6 {
		type ipv6_addr . ipv6_addr
		size 1024
		flags timeout
		comment "hosts of running FTP control sessions, both ways: a data SYN between them that finds no pinhole waits for ftpgate"
	}

	chain mark_ftp_data_forward {
		type filter hook forward priority filter - 10; policy accept;
		meta l4proto != tcp return comment "not TCP: nothing for ftpgate"
		@th,104,8 & 0x12 != 0x2 return comment "not a SYN: nothing for ftpgate"
		fib saddr . iif oif 0 return comment "source not routed back through the interface it came in on: forged"
		ct state new ip saddr . ip daddr . th dport @ftp_data_pinholes_v4 ct mark set ct mark | 0x01000000 delete @ftp_data_pinholes_v4 { ip saddr . ip daddr . th dport } counter packets 0 bytes 0 accept comment "first packet of an announced FTP data connection: mark it, close the pinhole"
		ct state new ip6 saddr . ip6 daddr . th dport @ftp_data_pinholes_v6 ct mark set ct mark | 0x01000000 delete @ftp_data_pinholes_v6 { ip6 saddr . ip6 daddr . th dport } counter packets 0 bytes 0 accept comment "first packet of an announced FTP data connection: mark it, close the pinhole"
	}
`
	// The input and output chains repeat the forward chain's rules.
	if !strings.HasPrefix(got, want) {
		t.Errorf("nft list table inet ftpgate mismatch (-want +got):\n%s", cmp.Diff(want, got[:min(len(got), len(want))]))
	}
	for _, c := range []string{"mark_ftp_data_input", "mark_ftp_data_output"} {
		if !strings.Contains(got, "chain "+c+" {") {
			t.Errorf("chain %s missing:\n%s", c, got)
		}
	}
}

func elements(t *testing.T, n *Nftables) []Pinhole {
	t.Helper()
	ps, err := n.Pinholes()
	if err != nil {
		t.Fatalf("Pinholes: %v", err)
	}
	slices.SortFunc(ps, func(a, b Pinhole) int { return strings.Compare(a.String(), b.String()) })
	return ps
}

func TestAddDelPinhole(t *testing.T) {
	ns := newNetNS(t)
	n := openTest(t, ns)
	p4 := Pinhole{Peer: netip.MustParseAddr("192.0.2.10"), Addr: netip.MustParseAddr("198.51.100.20"), Port: 40001}
	p6 := Pinhole{Peer: netip.MustParseAddr("2001:db8::10"), Addr: netip.MustParseAddr("2001:db8:1::20"), Port: 40002}
	for _, p := range []Pinhole{p4, p6} {
		if err := n.AddPinhole(p, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.Commit(); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if diff := cmp.Diff([]Pinhole{p4, p6}, elements(t, n), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("elements after add (-want +got):\n%s", diff)
	}
	set := nft(t, ns, "list", "set", "inet", "ftpgate", SetV4)
	if !strings.Contains(set, "192.0.2.10 . 198.51.100.20 . 40001 limit rate 1/week burst 1 packets timeout 1m expires") {
		t.Errorf("element with key and timeout not listed:\n%s", set)
	}
	// Adding again is idempotent.
	if err := n.AddPinhole(p4, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := n.Commit(); err != nil {
		t.Fatalf("Commit of a repeated add: %v", err)
	}
	// Deleting twice, and deleting what was never there, is idempotent too.
	never := Pinhole{Peer: p4.Peer, Addr: p4.Addr, Port: 1234}
	for _, p := range []Pinhole{p4, p4, never, p6} {
		if err := n.DelPinhole(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.Commit(); err != nil {
		t.Fatalf("Commit of deletes: %v", err)
	}
	if got := elements(t, n); len(got) != 0 {
		t.Errorf("elements after delete: %v, want none", got)
	}
}

func TestPinholeExpiresInKernel(t *testing.T) {
	ns := newNetNS(t)
	n := openTest(t, ns)
	p := Pinhole{Peer: netip.MustParseAddr("192.0.2.10"), Addr: netip.MustParseAddr("198.51.100.20"), Port: 40001}
	if err := n.AddPinhole(p, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := n.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := elements(t, n); len(got) != 1 {
		t.Fatalf("elements = %v, want the pinhole", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(elements(t, n)) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("pinhole with a 1s timeout still present after 5s")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestPinholeConsumedByFirstSYN connects over loopback inside the
// namespace: the output chain sees the SYN, marks the connection and
// deletes the element, so a second connection finds no pinhole.
func TestPinholeConsumedByFirstSYN(t *testing.T) {
	ns := newNetNS(t)
	n := openTestLogging(t, ns, 77)
	l, err := OpenLog(77, int(ns))
	if err != nil {
		t.Fatalf("OpenLog: %v", err)
	}
	defer l.Close()
	reports := make(chan Pinhole, 4)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for l.Wait(ctx) == nil {
			_, _ = l.Drain(func(r LogRecord) {
				if string(r.Prefix) != LogPrefixUsed {
					t.Errorf("log prefix %q, want %q", r.Prefix, LogPrefixUsed)
				}
				if p, ok := PinholeOfPacket(r.Payload); ok {
					reports <- p
				}
			})
		}
	}()
	var ln net.Listener
	inNetNS(t, ns, func() {
		if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
			t.Fatalf("ip link set lo up: %v %s", err, out)
		}
		var err error
		ln, err = net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
	})
	defer ln.Close()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	lo := netip.MustParseAddr("127.0.0.1")
	p := Pinhole{Peer: lo, Addr: lo, Port: port}
	if err := n.AddPinhole(p, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := n.Commit(); err != nil {
		t.Fatal(err)
	}
	inNetNS(t, ns, func() {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Errorf("dial: %v", err)
			return
		}
		c.Close()
	})
	if got := elements(t, n); len(got) != 0 {
		t.Errorf("pinhole still present after its connection started: %v", got)
	}
	select {
	case got := <-reports:
		if got != p {
			t.Errorf("NFLOG reported %v, want %v", got, p)
		}
	case <-time.After(3 * time.Second):
		t.Errorf("no NFLOG report of the consumed pinhole")
	}
	out := nft(t, ns, "list", "chain", "inet", "ftpgate", "mark_ftp_data_output")
	if !strings.Contains(out, "counter packets 1 ") {
		t.Errorf("want exactly one packet counted by the consuming rule:\n%s", out)
	}
	// The mark is on the connection in conntrack.
	var ctOut []byte
	inNetNS(t, ns, func() {
		ctOut, _ = exec.Command("cat", "/proc/net/nf_conntrack").CombinedOutput()
	})
	if len(ctOut) > 0 && !strings.Contains(string(ctOut), "mark=16777216") {
		t.Errorf("no conntrack entry with mark 0x01000000:\n%s", ctOut)
	}
}

func TestSecondOpenIsBusy(t *testing.T) {
	ns := newNetNS(t)
	openTest(t, ns)
	_, err := Open(Config{Mark: 1, MarkMask: 1, NetNS: int(ns)})
	if !errors.Is(err, ErrTableBusy) {
		t.Fatalf("second Open error = %v, want ErrTableBusy", err)
	}
}

func TestCloseRemovesTable(t *testing.T) {
	ns := newNetNS(t)
	n, err := Open(Config{Mark: 1, MarkMask: 1, NetNS: int(ns)})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if out := nft(t, ns, "list", "tables"); strings.Contains(out, "ftpgate") {
		t.Errorf("table still listed after Close:\n%s", out)
	}
}

// TestTableVanishesAfterKill9 starts a child process that opens the
// backend in the namespace and adds a pinhole, kills it with SIGKILL, and
// checks that the kernel removed the table with everything in it.
func TestTableVanishesAfterKill9(t *testing.T) {
	ns := newNetNS(t)
	// The child gets its own copy of the namespace fd: an *os.File owns its
	// fd and its finalizer would close the number the handle still uses.
	dup, err := unix.Dup(int(ns))
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(dup), "netns")
	defer f.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperHoldTable$")
	cmd.Env = append(os.Environ(), "FTPGATE_HOLD_TABLE=1")
	cmd.ExtraFiles = []*os.File{f}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ready") {
		_ = cmd.Process.Kill()
		t.Fatalf("helper did not get ready: %q %v", line, err)
	}
	if out := nft(t, ns, "list", "set", "inet", "ftpgate", SetV4); !strings.Contains(out, "192.0.2.10 . 198.51.100.20 . 40001") {
		t.Fatalf("helper's pinhole not present:\n%s", out)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for {
		out := nft(t, ns, "list", "tables")
		if !strings.Contains(out, "ftpgate") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("table still present 5s after kill -9:\n%s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestHelperHoldTable is the child of TestTableVanishesAfterKill9.
func TestHelperHoldTable(t *testing.T) {
	if os.Getenv("FTPGATE_HOLD_TABLE") != "1" {
		t.Skip("helper process for TestTableVanishesAfterKill9")
	}
	n, err := Open(Config{Mark: 1, MarkMask: 1, NetNS: 3})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	p := Pinhole{Peer: netip.MustParseAddr("192.0.2.10"), Addr: netip.MustParseAddr("198.51.100.20"), Port: 40001}
	_ = n.AddPinhole(p, time.Hour)
	if err := n.Commit(); err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println("ready " + strconv.Itoa(os.Getpid()))
	time.Sleep(time.Minute)
	os.Exit(0)
}

var _ = nftables.TableFamilyINet

func TestAddDelPeers(t *testing.T) {
	ns := newNetNS(t)
	n := openTest(t, ns)
	p4 := Peers{Client: netip.MustParseAddr("192.0.2.10"), Server: netip.MustParseAddr("198.51.100.20")}
	p6 := Peers{Client: netip.MustParseAddr("2001:db8::10"), Server: netip.MustParseAddr("2001:db8:1::20")}
	for _, p := range []Peers{p4, p6, p4} { // the repeat is idempotent
		if err := n.AddPeers(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.Commit(); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	// Both directions: passive data goes client to server, active the other way.
	set4 := nft(t, ns, "list", "set", "inet", "ftpgate", PeersV4)
	for _, e := range []string{"192.0.2.10 . 198.51.100.20", "198.51.100.20 . 192.0.2.10"} {
		if !strings.Contains(set4, e) {
			t.Errorf("%s not listed:\n%s", e, set4)
		}
	}
	if set6 := nft(t, ns, "list", "set", "inet", "ftpgate", PeersV6); !strings.Contains(set6, "2001:db8::10 . 2001:db8:1::20") {
		t.Errorf("IPv6 peers not listed:\n%s", set6)
	}
	for _, p := range []Peers{p4, p4, p6} { // deleting twice is idempotent
		if err := n.DelPeers(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.Commit(); err != nil {
		t.Fatalf("Commit of deletes: %v", err)
	}
	if set4 := nft(t, ns, "list", "set", "inet", "ftpgate", PeersV4); strings.Contains(set4, "192.0.2.10") {
		t.Errorf("peers left after delete:\n%s", set4)
	}
	if err := n.AddPeers(Peers{Client: p4.Client, Server: p6.Server}); !errors.Is(err, ErrInvalidPeers) {
		t.Errorf("mixed families: err = %v, want ErrInvalidPeers", err)
	}
}

func TestCancelAdd(t *testing.T) {
	ns := newNetNS(t)
	n := openTest(t, ns)
	p := Pinhole{Peer: netip.MustParseAddr("192.0.2.10"), Addr: netip.MustParseAddr("198.51.100.20"), Port: 40001}
	if err := n.AddPinhole(p, time.Minute); err != nil {
		t.Fatal(err)
	}
	if !n.CancelAdd(p) {
		t.Fatal("CancelAdd found no queued add")
	}
	if err := n.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := elements(t, n); len(got) != 0 {
		t.Errorf("cancelled pinhole in the kernel: %v", got)
	}
	// Committed adds cannot be cancelled; the caller deletes them.
	if err := n.AddPinhole(p, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := n.Commit(); err != nil {
		t.Fatal(err)
	}
	if n.CancelAdd(p) {
		t.Error("CancelAdd claimed a committed add")
	}
}

// TestHeldSYNFlushesBatchedCopies checks the ordering inline capture
// relies on once copies are batched: a data SYN between control peers
// that finds no pinhole delivers every copy logged before it, before it
// is queued, so the daemon sees the announcement it answers.
func TestHeldSYNFlushesBatchedCopies(t *testing.T) {
	ns := newNetNS(t)
	n := openTestLogging(t, ns, 78)
	var ctl, data net.Listener
	inNetNS(t, ns, func() {
		var err error
		if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
			t.Fatalf("ip link set lo up: %v %s", err, out)
		}
		if ctl, err = net.Listen("tcp4", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if data, err = net.Listen("tcp4", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	})
	defer ctl.Close()
	defer data.Close()
	ctlPort := uint16(ctl.Addr().(*net.TCPAddr).Port)
	// No process reads the queue: with bypass, held packets go on at once.
	if _, err := n.AddInlineRules(7878, 78, []uint16{ctlPort}); err != nil {
		t.Fatalf("AddInlineRules: %v", err)
	}
	lo := netip.MustParseAddr("127.0.0.1")
	if err := n.AddPeers(Peers{Client: lo, Server: lo}); err != nil {
		t.Fatal(err)
	}
	if err := n.Commit(); err != nil {
		t.Fatal(err)
	}
	listing := nft(t, ns, "list", "chain", "inet", "ftpgate", "mark_ftp_data_output")
	if want := `log prefix "ftpgate: flush" group 78 snaplen 0 queue-threshold 1`; !strings.Contains(listing, want) {
		t.Errorf("hold rule lacks %q:\n%s", want, listing)
	}
	// Traffic that cannot concern ftpgate leaves the chain first.
	order := []string{
		"meta l4proto != tcp return",
		"@th,104,8 & 0x12 != 0x2 return",
		"meta mark & 0x01000000 == 0x01000000",
	}
	for i, at := 0, -1; i < len(order); i++ {
		j := strings.Index(listing, order[i])
		if j < 0 || j < at {
			t.Errorf("want the rules in the order %q; %q is missing or out of place:\n%s", order, order[i], listing)
			break
		}
		at = j
	}
	l, err := OpenLog(78, int(ns))
	if err != nil {
		t.Fatalf("OpenLog: %v", err)
	}
	defer l.Close()
	// Ten seconds is far longer than this test takes between sending a
	// copy and reading it: only the SYN's own record can deliver it.
	if err := l.SetBatch(64, 32<<10, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	const line = "227 Entering Passive Mode (127,0,0,1,4,1)\r\n"
	inNetNS(t, ns, func() {
		c, err := net.Dial("tcp4", ctl.Addr().String())
		if err != nil {
			t.Fatalf("dial control: %v", err)
		}
		defer c.Close()
		if _, err := c.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	})
	// The SYN's own record carries no packet (snaplen 0) and is not
	// handed on; the copies it delivered are what counts.
	payloads := func() (n int, found bool) {
		_, err := l.Drain(func(r LogRecord) {
			n++
			found = found || strings.Contains(string(r.Payload), line)
		})
		if err != nil {
			t.Fatalf("Drain: %v", err)
		}
		return
	}
	if n, _ := payloads(); n != 0 {
		t.Fatalf("%d records delivered before the batch was due; the test cannot tell a flush from the timer", n)
	}
	inNetNS(t, ns, func() {
		c, err := net.Dial("tcp4", data.Addr().String())
		if err != nil {
			t.Fatalf("dial data: %v", err)
		}
		c.Close()
	})
	if n, found := payloads(); !found {
		t.Errorf("after the data SYN: %d records, none with the control line; the SYN did not deliver the batch", n)
	}
}

// TestInlineCopiesSegmentsWithData checks which control segments inline
// capture copies: every one that carries data, IP options or IPv6
// headers whatever their length, and SYN, FIN and RST, but no pure ACK,
// a large share of control traffic that ftpgate has no use for.
func TestInlineCopiesSegmentsWithData(t *testing.T) {
	for _, tc := range []struct{ network, addr string }{{"tcp4", "127.0.0.1:0"}, {"tcp6", "[::1]:0"}} {
		t.Run(tc.network, func(t *testing.T) {
			ns := newNetNS(t)
			n := openTestLogging(t, ns, 79)
			var ctl net.Listener
			inNetNS(t, ns, func() {
				if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
					t.Fatalf("ip link set lo up: %v %s", err, out)
				}
				var err error
				if ctl, err = net.Listen(tc.network, tc.addr); err != nil {
					t.Fatal(err)
				}
			})
			defer ctl.Close()
			port := uint16(ctl.Addr().(*net.TCPAddr).Port)
			if _, err := n.AddInlineRules(7979, 79, []uint16{port}); err != nil {
				t.Fatalf("AddInlineRules: %v", err)
			}
			if err := n.Commit(); err != nil {
				t.Fatal(err)
			}
			listing := nft(t, ns, "list", "chain", "inet", "ftpgate", inspectChain)
			if want := "@ih,0,8 & 0x0 == 0x0 log group 79 accept"; strings.Count(listing, want) != 1 {
				t.Errorf("want one data rule %q:\n%s", want, listing)
			}
			l, err := OpenLog(79, int(ns))
			if err != nil {
				t.Fatalf("OpenLog: %v", err)
			}
			defer l.Close()
			lines := []string{"USER anonymous\r\n", "P", "ASV\r\n"}
			inNetNS(t, ns, func() {
				c, err := net.Dial(tc.network, ctl.Addr().String())
				if err != nil {
					t.Fatalf("dial: %v", err)
				}
				s, err := ctl.Accept()
				if err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				for _, line := range lines {
					if _, err := c.Write([]byte(line)); err != nil {
						t.Fatal(err)
					}
					// Each write its own segment, acknowledged before the next.
					buf := make([]byte, len(line))
					if _, err := io.ReadFull(s, buf); err != nil {
						t.Fatal(err)
					}
					time.Sleep(50 * time.Millisecond)
				}
				c.Close()
			})
			time.Sleep(100 * time.Millisecond)
			var data string
			var records int
			if _, err := l.Drain(func(r LogRecord) {
				records++
				ip := r.Payload
				hl := 40
				if ip[0]>>4 == 4 {
					hl = int(ip[0]&0x0f) * 4
				}
				tcp := ip[hl:]
				payload := tcp[int(tcp[12]>>4)*4:]
				const fin, syn, rst = 0x01, 0x02, 0x04
				if len(payload) == 0 && tcp[13]&(fin|syn|rst) == 0 {
					t.Errorf("pure ACK copied: flags %#02x", tcp[13])
				}
				data += string(payload)
			}); err != nil {
				t.Fatalf("Drain: %v", err)
			}
			// The lo interface passes each segment through both the output
			// and the input hook, so every copy comes twice.
			if want := strings.Repeat(lines[0], 2) + strings.Repeat(lines[1], 2) + strings.Repeat(lines[2], 2); data != want {
				t.Errorf("copied data %q, want %q (%d records)", data, want, records)
			}
		})
	}
}
