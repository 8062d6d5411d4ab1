package rules

import (
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"strings"
	"testing"
	"time"

	"github.com/ftpgate/ftpgate/internal/netnstest"
	"github.com/ftpgate/ftpgate/nat"
)

var testNAT = NATConfig{ProxyPort: 8021, RouteMark: 0x02000000, SocketMark: 0x04000000, Ports: []uint16{21, 2121}}

// TestNATRulesInKernel loads the NAT maps and chains into a throwaway
// namespace's kernel and checks what nft lists, and that mappings come
// and go with commits.
func TestNATRulesInKernel(t *testing.T) {
	ns := netnstest.New(t)
	nat := testNAT
	n, err := Open(Config{Mark: 0x01000000, MarkMask: 0x01000000, MaxPinholes: 1024, NetNS: int(ns), NAT: &nat})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer n.Close()
	if _, err := n.AddInlineRules(2121, DefaultLogGroup, nat.Ports); err != nil {
		t.Fatalf("AddInlineRules: %v", err)
	}
	got := netnstest.Nft(t, ns, "list", "table", "inet", "ftpgate")
	for _, want := range []string{
		"map ftp_data_dnat_v4 {\n\t\ttype ipv4_addr . ipv4_addr . inet_service : ipv4_addr . inet_service",
		"map ftp_data_snat_v6 {\n\t\ttype ipv6_addr . ipv6_addr . inet_service : ipv6_addr",
		"type nat hook prerouting priority dstnat - 1; policy accept;\n\t\ttcp flags syn / syn,ack dnat ip to ip saddr . ip daddr . tcp dport map @ftp_data_dnat_v4",
		"dnat ip6 to ip6 saddr . ip6 daddr . tcp dport map @ftp_data_dnat_v6",
		"snat ip to ip saddr . ip daddr . tcp dport map @ftp_data_snat_v4",
		"ct original ip saddr . ct original proto-src . ct original ip daddr . ct original proto-dst @ftp_control_to_proxy_v4 tproxy ip to 127.0.0.1:8021 meta mark set meta mark | 0x02000000 accept",
		"tproxy ip6 to [::1]:8021",
		"tcp dport 2121 socket transparent 1 meta mark set meta mark | 0x02000000 accept",
		"type filter hook postrouting priority srcnat + 1; policy accept;\n\t\tmeta mark & 0x04000000 == 0x04000000 return",
		"ct status snat,dnat add @ftp_control_to_proxy_v4 { ct original ip saddr . ct original proto-src . ct original ip daddr . ct original proto-dst } counter packets 0 bytes 0 drop",
		"meta mark & 0x02000000 == 0x02000000 ct state new ct mark set ct mark | 0x01000000 accept",
		"meta mark & 0x06000000 != 0x00000000 return",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("nft list lacks\n%s\nin:\n%s", want, got)
		}
	}

	d := Mapping{Peer: netip.MustParseAddr("203.0.113.10"), Addr: netip.MustParseAddr("203.0.113.1"), Port: 61001,
		ToAddr: netip.MustParseAddr("198.51.100.2"), ToPort: 40001}
	s := Mapping{SNAT: true, Peer: netip.MustParseAddr("198.51.100.2"), Addr: netip.MustParseAddr("203.0.113.10"), Port: 50000,
		ToAddr: netip.MustParseAddr("203.0.113.1")}
	d6 := Mapping{Peer: netip.MustParseAddr("2001:db8:3::10"), Addr: netip.MustParseAddr("2001:db8:3::1"), Port: 61002,
		ToAddr: netip.MustParseAddr("2001:db8:2::2"), ToPort: 40002}
	for _, m := range []Mapping{d, s, d6} {
		if err := n.AddMapping(m, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.Commit(); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	list := func(name string) string { return netnstest.Nft(t, ns, "list", "map", "inet", "ftpgate", name) }
	for name, want := range map[string]string{
		DNATMapV4: "203.0.113.10 . 203.0.113.1 . 61001 timeout 1m expires",
		SNATMapV4: "198.51.100.2 . 203.0.113.10 . 50000 timeout 1m expires",
		DNATMapV6: "2001:db8:3::10 . 2001:db8:3::1 . 61002 timeout 1m expires",
	} {
		if got := list(name); !strings.Contains(got, want) {
			t.Errorf("%s lacks %q:\n%s", name, want, got)
		}
	}
	if got := list(DNATMapV4); !strings.Contains(got, ": 198.51.100.2 . 40001") {
		t.Errorf("%s maps to the wrong place:\n%s", DNATMapV4, got)
	}
	// Deleting twice, and deleting what is not there, is no error.
	for _, m := range []Mapping{d, s, d6, d} {
		if err := n.DelMapping(m); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.Commit(); err != nil {
		t.Fatalf("Commit of the deletes: %v", err)
	}
	for _, name := range []string{DNATMapV4, SNATMapV4, DNATMapV6} {
		if got := list(name); strings.Contains(got, "elements") {
			t.Errorf("%s still has elements:\n%s", name, got)
		}
	}
	if err := n.AddMapping(Mapping{Peer: d.Peer, Addr: d6.Addr, Port: 1, ToAddr: d.ToAddr, ToPort: 1}, time.Minute); err == nil {
		t.Error("a mapping that mixes families was queued")
	}
}

// TestNATPacketPathRulesInKernel: in the packet path the detect chain
// adds the translated connection without dropping its SYN, both queue
// chains queue its segments without bypass, the forward copy chain
// skips them, replies from sources failing the reverse-path check are
// dropped, there is no proxy chain and no kept table yet; and
// ForgetTranslated removes an element, also one that is not there.
func TestNATPacketPathRulesInKernel(t *testing.T) {
	ns := netnstest.New(t)
	nat := NATConfig{Ports: []uint16{21, 2121}, Packet: true, Queue: 2122, TranslatedTimeout: 2 * time.Hour}
	n, err := Open(Config{Mark: 0x01000000, MarkMask: 0x01000000, MaxPinholes: 1024, NetNS: int(ns), NAT: &nat})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer n.Close()
	mode, err := n.AddInlineRules(2121, DefaultLogGroup, nat.Ports)
	if err != nil {
		t.Fatalf("AddInlineRules: %v", err)
	}
	got := netnstest.Nft(t, ns, "list", "table", "inet", "ftpgate")
	for _, want := range []string{
		"set ftp_control_translated_v4 {\n\t\ttype ipv4_addr . inet_service . ipv4_addr . inet_service",
		"ct status snat,dnat add @ftp_control_translated_v4 { ct original ip saddr . ct original proto-src . ct original ip daddr . ct original proto-dst timeout 1m } counter packets 0 bytes 0 comment",
		"ct direction reply ct original ip saddr . ct original proto-src . ct original ip daddr . ct original proto-dst @ftp_control_translated_v4 fib saddr . iif oif 0 counter packets 0 bytes 0 drop",
		"type filter hook prerouting priority -250; policy accept;\n\t\tfib saddr . iif oif 0 return comment \"a source that cannot come from there: not ftpgate's\"\n\t\tip saddr . tcp sport . ip daddr . tcp dport @ftp_control_translated_v4 update @ftp_control_translated_v4 { ip saddr . tcp sport . ip daddr . tcp dport timeout 2h } ",
		"type filter hook postrouting priority srcnat + 2; policy accept;\n\t\tct direction reply ip daddr . tcp dport . ip saddr . tcp sport @ftp_control_translated_v4 update @ftp_control_translated_v4 { ip daddr . tcp dport . ip saddr . tcp sport timeout 2h } ",
		"ip6 saddr . tcp sport . ip6 daddr . tcp dport @ftp_control_translated_v6",
		"ct status snat,dnat return comment \"translated: the NAT packet path reads its segments\"",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("nft list lacks\n%s\nin:\n%s", want, got)
		}
	}
	for _, absent := range []string{"tproxy", "ftp_control_to_proxy", "proxy_ftp_control"} {
		if strings.Contains(got, absent) {
			t.Errorf("the packet path's table has %q:\n%s", absent, got)
		}
	}
	if detect := netnstest.Nft(t, ns, "list", "chain", "inet", "ftpgate", natDetectChain); strings.Contains(detect, "drop") {
		t.Errorf("the packet path drops in the detect chain:\n%s", detect)
	}
	if tables := netnstest.Nft(t, ns, "list", "tables"); strings.Contains(tables, "ftpgate_nat") {
		t.Errorf("a kept table before anything was shifted: %s", tables)
	}
	// Each queue chain queues to 2122, without bypass.
	for _, chain := range []string{natFromClientChain, natFromServerChain} {
		text := netnstest.Nft(t, ns, "list", "chain", "inet", "ftpgate", chain)
		want := "queue to 2122"
		if mode == QueueXtables {
			want = "NFQUEUE"
		}
		if strings.Count(text, want) != 2 || strings.Contains(text, "bypass") {
			t.Errorf("%s does not queue both families to 2122 without bypass:\n%s", chain, text)
		}
	}
	client, server := netip.MustParseAddrPort("192.0.2.10:40000"), netip.MustParseAddrPort("198.51.100.2:21")
	addTranslated(t, n, client, server)
	for range 2 {
		if err := n.ForgetTranslated(client, server, false); err != nil {
			t.Fatalf("ForgetTranslated: %v", err)
		}
	}
	if got := netnstest.Nft(t, ns, "list", "set", "inet", "ftpgate", TranslatedV4); strings.Contains(got, "elements") {
		t.Errorf("element left:\n%s", got)
	}
}

// TestNATKernelShiftRulesInKernel loads the packet path's rules for a
// kernel that shifts sequence numbers itself (the NFQUEUE glue and
// userspace helpers: Debian's kernels; the VM matrix runs it there): the
// stub helper for every new control connection before NAT, and only
// segments that can change the stream queued, after conntrack.
func TestNATKernelShiftRulesInKernel(t *testing.T) {
	ns := netnstest.New(t)
	if err := nat.RegisterHelperStub(int(ns)); err != nil {
		t.Skipf("this kernel has no userspace conntrack helpers, which the kernel-shift design needs (ftpgate then shifts sequence numbers itself): %v", err)
	}
	cfg := NATConfig{Ports: []uint16{21, 2121}, Packet: true, Queue: 2122, TranslatedTimeout: 2 * time.Hour, KernelShifts: true, HelperStub: nat.HelperStub}
	n, err := Open(Config{Mark: 0x01000000, MarkMask: 0x01000000, MaxPinholes: 1024, NetNS: int(ns), NAT: &cfg})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer n.Close()
	mode, err := n.AddInlineRules(2121, DefaultLogGroup, cfg.Ports)
	if err != nil {
		t.Fatalf("AddInlineRules: %v", err)
	}
	got := netnstest.Nft(t, ns, "list", "table", "inet", "ftpgate")
	for _, want := range []string{
		"ct helper " + natHelperObject + " {\n\t\ttype \"ftpgate\" protocol tcp",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("nft list lacks\n%s\nin:\n%s", want, got)
		}
	}
	// The helper for new IPv4 connections to each control port.
	var helped []string
	for _, line := range strings.Split(got, "\n") {
		if strings.Contains(line, "ct helper set \""+natHelperObject+"\"") {
			if !strings.Contains(line, "meta nfproto ipv4") || !strings.Contains(line, "ct state new") || !strings.Contains(line, "syn") {
				t.Errorf("helper rule not for new IPv4 SYNs: %s", line)
			}
			helped = append(helped, line)
		}
	}
	if len(helped) != 2 || !strings.Contains(helped[0], "tcp dport 21 ") || !strings.Contains(helped[1], "tcp dport 2121 ") {
		t.Errorf("helper rules: %q", helped)
	}
	queue := "queue to 2122"
	if mode == QueueXtables {
		queue = "NFQUEUE"
	}
	// IPv4: per side, one rule for SYN, FIN or RST and one for data, none
	// for a bare acknowledgement, established only, after conntrack for
	// the client's. IPv6: every segment, the client's before conntrack
	// (ftpgate shifts those). None with bypass.
	for _, c := range []struct {
		chain, prio             string
		queues, established, ih int
		v4, v6                  bool
	}{
		{natFromClientKernelChain, "priority mangle;", 2, 2, 1, true, false},
		{natFromClientChain, "priority -250;", 1, 0, 0, false, true},
		{natFromServerChain, "priority srcnat + 2;", 3, 2, 1, true, true},
		{natHelperChain, "priority mangle - 10;", 0, 0, 0, true, false},
	} {
		text := netnstest.Nft(t, ns, "list", "chain", "inet", "ftpgate", c.chain)
		if !strings.Contains(text, c.prio) || strings.Count(text, queue) != c.queues || strings.Count(text, "ct state established") != c.established ||
			strings.Count(text, "@ih,0,8") != c.ih || strings.Contains(text, "bypass") ||
			strings.Contains(text, "ftp_control_translated_v4") != (c.v4 && c.chain != natHelperChain) || strings.Contains(text, "ftp_control_translated_v6") != c.v6 {
			t.Errorf("%s: want %s, %d queue rules (%d established, %d for data), IPv4 %v, IPv6 %v, no bypass:\n%s", c.chain, c.prio, c.queues, c.established, c.ih, c.v4, c.v6, text)
		}
	}
	if tables := netnstest.Nft(t, ns, "list", "tables"); strings.Contains(tables, "ftpgate_nat") {
		t.Errorf("a kept table: %s", tables)
	}
}

// addTranslated puts a connection into the owned table's set, as the
// detect chain would (nft may not change an owned table).
func addTranslated(t *testing.T, n *Nftables, client, server netip.AddrPort) {
	t.Helper()
	if err := n.conn.SetAddElements(n.sets.nat.translated.v4, []nftables.SetElement{{Key: translatedKey(client, server), Timeout: time.Hour}}); err != nil {
		t.Fatal(err)
	}
	if err := n.conn.Flush(); err != nil {
		t.Fatal(err)
	}
}

// TestNATKeptTable: a shifted connection moves, in one transaction, to
// the kept table, made then; that table stays after the owned one is
// gone (a stop that keeps it, or kill -9: the socket closes), holding
// only the shifted connection; the next Open adopts it with the
// connection and without doubled rules; a stop that keeps nothing
// removes it.
func TestNATKeptTable(t *testing.T) {
	ns := netnstest.New(t)
	open := func() *Nftables {
		nat := NATConfig{Ports: []uint16{21}, Packet: true, Queue: 2122, TranslatedTimeout: time.Hour}
		n, err := Open(Config{Mark: 0x01000000, MarkMask: 0x01000000, MaxPinholes: 1024, NetNS: int(ns), NAT: &nat})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		if _, err := n.AddInlineRules(2121, DefaultLogGroup, nat.Ports); err != nil {
			t.Fatalf("AddInlineRules: %v", err)
		}
		return n
	}
	n := open()
	client, server := netip.MustParseAddrPort("192.0.2.10:40000"), netip.MustParseAddrPort("198.51.100.2:21")
	addTranslated(t, n, client, server)
	if err := n.ShiftTranslated(client, server); err != nil {
		t.Fatalf("ShiftTranslated: %v", err)
	}
	if got := netnstest.Nft(t, ns, "list", "set", "inet", "ftpgate", TranslatedV4); strings.Contains(got, "192.0.2.10") {
		t.Errorf("the shifted connection is still in the owned table's set:\n%s", got)
	}
	if got := netnstest.Nft(t, ns, "list", "set", "inet", "ftpgate_nat", ShiftedV4); !strings.Contains(got, "192.0.2.10 . 40000 . 198.51.100.2 . 21") {
		t.Errorf("the shifted connection is not in the kept table:\n%s", got)
	}
	if err := n.StopTranslating(true); err != nil {
		t.Fatal(err)
	}
	n.Close()
	tables := netnstest.Nft(t, ns, "list", "tables")
	if !strings.Contains(tables, "table inet ftpgate_nat\n") || strings.Contains(tables, "table inet ftpgate\n") {
		t.Fatalf("after the stop: %s", tables)
	}
	if kept := netnstest.Nft(t, ns, "list", "table", "inet", "ftpgate_nat"); strings.Contains(kept, "detect") || strings.Contains(kept, "translated_v4") {
		t.Errorf("the kept table holds more than the shifted connections:\n%s", kept)
	}
	n = open()
	defer n.Close()
	set := netnstest.Nft(t, ns, "list", "set", "inet", "ftpgate_nat", ShiftedV4)
	if !strings.Contains(set, "192.0.2.10 . 40000 . 198.51.100.2 . 21") {
		t.Errorf("the shifted connection did not outlive the restart:\n%s", set)
	}
	// Both families per chain; the client's chain has the reverse-path
	// rule first.
	for chain, want := range map[string]int{natFromClientChain: 3, natFromServerChain: 2, natReplyCheckChain: 2} {
		text := netnstest.Nft(t, ns, "list", "chain", "inet", "ftpgate_nat", chain)
		if n := strings.Count(text, "comment"); n != want {
			t.Errorf("%s after adoption has %d rules, want %d:\n%s", chain, n, want, text)
		}
	}
	if err := n.ForgetTranslated(client, server, true); err != nil {
		t.Fatal(err)
	}
	if set := netnstest.Nft(t, ns, "list", "set", "inet", "ftpgate_nat", ShiftedV4); strings.Contains(set, "192.0.2.10") {
		t.Errorf("forgotten, still kept:\n%s", set)
	}
	if err := n.StopTranslating(false); err != nil {
		t.Fatal(err)
	}
	if tables := netnstest.Nft(t, ns, "list", "tables"); strings.Contains(tables, "ftpgate_nat") {
		t.Errorf("a stop that keeps nothing left the table: %s", tables)
	}
}

// TestForeignQueues finds another program's queue rule (the queue
// statement where the kernel has it, else the xtables target), in any
// family, and not ftpgate's own.
func TestForeignQueues(t *testing.T) {
	ns := netnstest.New(t)
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	add := func(fam nftables.TableFamily, table string, q expr.Any) error {
		tb := c.AddTable(&nftables.Table{Name: table, Family: fam})
		ch := c.AddChain(&nftables.Chain{Name: "fwd", Table: tb, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter})
		exprs := []expr.Any{&expr.Counter{}}
		if q != nil {
			exprs = append(exprs, q)
		}
		c.AddRule(&nftables.Rule{Table: tb, Chain: ch, Exprs: exprs})
		return c.Flush()
	}
	for _, q := range []expr.Any{&expr.Queue{Num: 3}, xtQueue(3)} {
		if err = add(nftables.TableFamilyIPv4, "ips", q); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("a queue rule: %v", err)
	}
	if err := add(nftables.TableFamilyINet, "quiet", nil); err != nil {
		t.Fatal(err)
	}
	if err := add(nftables.TableFamilyINet, "ftpgate", xtQueue(4)); err != nil {
		if err := add(nftables.TableFamilyINet, "ftpgate", &expr.Queue{Num: 4}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := ForeignQueues(int(ns), "ftpgate")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != "ip ips fwd" {
		t.Errorf("ForeignQueues = %q, want [ip ips fwd]", got)
	}
}
