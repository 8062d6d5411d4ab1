package rules

import (
	"bufio"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ftpgate/ftpgate/internal/netnstest"
	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

func openTest(t *testing.T, ns netns.NsHandle) *Nftables {
	t.Helper()
	n, err := Open(Config{Mark: 0x01000000, MarkMask: 0x01000000, MaxPinholes: 1024, NetNS: int(ns)})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

func TestOpenCreatesReadableTable(t *testing.T) {
	ns := netnstest.New(t)
	openTest(t, ns)
	got := netnstest.Nft(t, ns, "list", "table", "inet", "ftpgate")
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

	set ftps_ranges_v4 {
		type ipv4_addr . ipv4_addr . inet_service
		flags interval
		comment "encrypted FTP sessions (FTPS): client . server . the server's passive ports, while the session lives"
	}

	set ftps_ranges_v6 {
		type ipv6_addr . ipv6_addr . inet_service
		flags interval
		comment "encrypted FTP sessions (FTPS): client . server . the server's passive ports, while the session lives"
	}

	set ftps_active_v4 {
		type ipv4_addr . ipv4_addr . inet_service
		flags interval
		comment "implicit FTPS in active mode: server . client . the client's active ports, from port 989, while the session lives"
	}

	set ftps_active_v6 {
		type ipv6_addr . ipv6_addr . inet_service
		flags interval
		comment "implicit FTPS in active mode: server . client . the client's active ports, from port 989, while the session lives"
	}

	chain mark_ftp_data_forward {
		type filter hook forward priority filter - 10; policy accept;
		meta l4proto != tcp return comment "not TCP: nothing for ftpgate"
		@th,104,8 & 0x12 != 0x2 return comment "not a SYN: nothing for ftpgate"
		fib saddr . iif oif 0 return comment "source not routed back through the interface it came in on: forged"
		ct state new ip saddr . ip daddr . th dport @ftp_data_pinholes_v4 ct mark set ct mark | 0x01000000 delete @ftp_data_pinholes_v4 { ip saddr . ip daddr . th dport } counter packets 0 bytes 0 accept comment "first packet of an announced FTP data connection: mark it, close the pinhole"
		ct state new ip6 saddr . ip6 daddr . th dport @ftp_data_pinholes_v6 ct mark set ct mark | 0x01000000 delete @ftp_data_pinholes_v6 { ip6 saddr . ip6 daddr . th dport } counter packets 0 bytes 0 accept comment "first packet of an announced FTP data connection: mark it, close the pinhole"
		ct state new ip saddr . ip daddr . th dport @ftps_ranges_v4 ct mark set ct mark | 0x01000000 counter packets 0 bytes 0 accept comment "data connection of an encrypted FTP session (FTPS): within its scoped range"
		ct state new th sport 989 ip saddr . ip daddr . th dport @ftps_active_v4 ct mark set ct mark | 0x01000000 counter packets 0 bytes 0 accept comment "active-mode data connection of an implicit FTPS session: within its scope"
		ct state new ip6 saddr . ip6 daddr . th dport @ftps_ranges_v6 ct mark set ct mark | 0x01000000 counter packets 0 bytes 0 accept comment "data connection of an encrypted FTP session (FTPS): within its scoped range"
		ct state new th sport 989 ip6 saddr . ip6 daddr . th dport @ftps_active_v6 ct mark set ct mark | 0x01000000 counter packets 0 bytes 0 accept comment "active-mode data connection of an implicit FTPS session: within its scope"
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
	ns := netnstest.New(t)
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
	set := netnstest.Nft(t, ns, "list", "set", "inet", "ftpgate", SetV4)
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
	ns := netnstest.New(t)
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

func TestSecondOpenIsBusy(t *testing.T) {
	ns := netnstest.New(t)
	openTest(t, ns)
	_, err := Open(Config{Mark: 1, MarkMask: 1, NetNS: int(ns)})
	if !errors.Is(err, ErrTableBusy) {
		t.Fatalf("second Open error = %v, want ErrTableBusy", err)
	}
}

func TestCloseRemovesTable(t *testing.T) {
	ns := netnstest.New(t)
	n, err := Open(Config{Mark: 1, MarkMask: 1, NetNS: int(ns)})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if out := netnstest.Nft(t, ns, "list", "tables"); strings.Contains(out, "ftpgate") {
		t.Errorf("table still listed after Close:\n%s", out)
	}
}

// TestTableVanishesAfterKill9 starts a child process that opens the
// backend in the namespace and adds a pinhole, kills it with SIGKILL, and
// checks that the kernel removed the table with everything in it.
func TestTableVanishesAfterKill9(t *testing.T) {
	ns := netnstest.New(t)
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
	if out := netnstest.Nft(t, ns, "list", "set", "inet", "ftpgate", SetV4); !strings.Contains(out, "192.0.2.10 . 198.51.100.20 . 40001") {
		t.Fatalf("helper's pinhole not present:\n%s", out)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for {
		out := netnstest.Nft(t, ns, "list", "tables")
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
	ns := netnstest.New(t)
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
	set4 := netnstest.Nft(t, ns, "list", "set", "inet", "ftpgate", PeersV4)
	for _, e := range []string{"192.0.2.10 . 198.51.100.20", "198.51.100.20 . 192.0.2.10"} {
		if !strings.Contains(set4, e) {
			t.Errorf("%s not listed:\n%s", e, set4)
		}
	}
	if set6 := netnstest.Nft(t, ns, "list", "set", "inet", "ftpgate", PeersV6); !strings.Contains(set6, "2001:db8::10 . 2001:db8:1::20") {
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
	if set4 := netnstest.Nft(t, ns, "list", "set", "inet", "ftpgate", PeersV4); strings.Contains(set4, "192.0.2.10") {
		t.Errorf("peers left after delete:\n%s", set4)
	}
	if err := n.AddPeers(Peers{Client: p4.Client, Server: p6.Server}); !errors.Is(err, ErrInvalidPeers) {
		t.Errorf("mixed families: err = %v, want ErrInvalidPeers", err)
	}
}

// TestCancelAdd needs no kernel: a cancelled add must cost the kernel
// nothing, and what a commit costs is the messages it sends.
func TestCancelAdd(t *testing.T) {
	r := newRecorder(t)
	p := Pinhole{Peer: netip.MustParseAddr("192.0.2.10"), Addr: netip.MustParseAddr("198.51.100.20"), Port: 40001}
	commit := func() []netlink.Message {
		t.Helper()
		r.msgs = nil
		if err := r.Commit(); err != nil {
			t.Fatal(err)
		}
		return r.msgs
	}
	if err := r.AddPinhole(p, time.Minute); err != nil {
		t.Fatal(err)
	}
	if !r.CancelAdd(p) {
		t.Fatal("CancelAdd found no queued add")
	}
	if msgs := commit(); len(msgs) != 0 {
		t.Errorf("a cancelled add sent %d messages:\n%s", len(msgs), dump(msgs))
	}
	// Committed adds cannot be cancelled; the caller deletes them.
	if err := r.AddPinhole(p, time.Minute); err != nil {
		t.Fatal(err)
	}
	if msgs := commit(); len(msgs) == 0 {
		t.Fatal("the add sent nothing")
	}
	if r.CancelAdd(p) {
		t.Error("CancelAdd claimed a committed add")
	}
	// Nor can an add that a queued delete follows.
	if err := r.AddPinhole(p, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := r.DelPinhole(p); err != nil {
		t.Fatal(err)
	}
	if r.CancelAdd(p) {
		t.Error("CancelAdd dropped an add that a delete follows")
	}
}
