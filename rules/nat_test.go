package rules

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ftpgate/ftpgate/internal/netnstest"
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
