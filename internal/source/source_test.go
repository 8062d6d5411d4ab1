package source

import (
	"net/netip"
	"testing"
)

func TestOf(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.10":               "192.0.2.10/32",
		"::ffff:192.0.2.10":        "192.0.2.10/32",
		"2001:db8:1::10":           "2001:db8:1::/64",
		"2001:db8:1::ffff:1234:99": "2001:db8:1::/64",
	} {
		if got := Of(netip.MustParseAddr(in)); got.String() != want {
			t.Errorf("Of(%s) = %s, want %s", in, got, want)
		}
	}
	s := Shares{}
	k := Of(netip.MustParseAddr("2001:db8:1::1"))
	s.Add(k)
	s.Add(Of(netip.MustParseAddr("2001:db8:1::2")))
	if s[k] != 2 {
		t.Errorf("two addresses of one /64: share %d, want 2", s[k])
	}
	s.Remove(k)
	s.Remove(k)
	if len(s) != 0 {
		t.Errorf("left: %v", s)
	}
}
