package rules

import (
	"net/netip"
	"testing"

	"github.com/ftpgate/ftpgate/internal/netnstest"
)

// TestPortForwards loads an admin's NAT rules into a throwaway namespace
// and checks which public address:ports ftpgate reads as forwarded: a
// port, a set of ports and ranges, a whole address, a redirect; not a
// masquerade, and not ftpgate's own table.
func TestPortForwards(t *testing.T) {
	ns := netnstest.New(t)
	netnstest.Nft(t, ns, "-f", writeTemp(t, `table inet nat {
		chain dstnat { type nat hook prerouting priority dstnat;
			iifname "wan" ip daddr 203.0.113.1 tcp dport 8080 dnat ip to 198.51.100.2
			ip daddr 203.0.113.2 tcp dport { 2121, 62000-62010 } dnat ip to 198.51.100.3
			ip daddr 203.0.113.9 dnat ip to 198.51.100.9
			ip6 daddr 2001:db8:3::1 tcp dport 8443 dnat ip6 to [2001:db8:2::2]:443
			tcp dport 3128 redirect to :8080
			ip daddr 198.18.0.0/28 dnat ip to 198.51.100.7
			ip daddr 203.0.113.3 dnat ip to tcp dport map { 8000 : 198.51.100.8, 8001 : 198.51.100.9 }
			ip daddr 203.0.113.4 tcp dport vmap { 9000 : jump svc9000 }
			ip daddr 203.0.113.5 tcp dport 9500 jump svc9500
		}
		chain svc9000 {
			dnat ip to 198.51.100.10
		}
		chain svc9500 {
			jump sep9500
		}
		chain sep9500 {
			dnat ip to 198.51.100.11
		}
		chain srcnat { type nat hook postrouting priority srcnat;
			oifname "wan" masquerade
		}
	}`))
	n := openTest(t, ns)
	got, err := n.PortForwards()
	if err != nil {
		t.Fatal(err)
	}
	covered := func(s string) bool {
		ap := netip.MustParseAddrPort(s)
		for _, f := range got {
			if f.Covers(ap) {
				return true
			}
		}
		return false
	}
	for addr, want := range map[string]bool{
		"203.0.113.1:8080": true, "203.0.113.1:8081": false, "203.0.113.2:8080": false,
		"203.0.113.2:2121": true, "203.0.113.2:62005": true, "203.0.113.2:62011": false,
		"203.0.113.9:61500": true, "203.0.113.8:61500": false,
		"[2001:db8:3::1]:8443": true, "[2001:db8:3::1]:61000": false,
		"192.0.2.1:3128": true, "203.0.113.1:3128": true,
		"198.18.0.9:61500": true, "198.18.0.17:61500": false,
		"203.0.113.3:8001": true, "203.0.113.3:8002": false,
		"203.0.113.4:9000": true, "203.0.113.4:9001": false,
		"203.0.113.5:9500": true, "203.0.113.5:9501": false,
	} {
		if covered(addr) != want {
			t.Errorf("%s forwarded: %v, want %v (read: %v)", addr, !want, want, got)
		}
	}
}
