package conntrack

import (
	"net/netip"
	"testing"

	"github.com/ftpgate/ftpgate/rules"
)

func ftpsHarness(t *testing.T, cfg Config) *harness {
	cfg.FTPSRanges = []FTPSRange{{Server: netip.MustParsePrefix("198.51.100.20/32"), Lo: 41000, Hi: 41999}}
	return newHarness(t, cfg)
}

// encrypted runs a session from client to srv up to an accepted AUTH TLS.
func encrypted(t *testing.T, h *harness, client string) *conn {
	c := newConn(t, client, srv)
	h.feed(c.handshake()...)
	h.feed(c.send(false, "220 hello\r\n"), c.send(true, "AUTH TLS\r\n"), c.send(false, "234 Proceed\r\n"))
	return c
}

var scoped10 = rules.ScopedRange{Client: netip.MustParseAddr("192.0.2.10"), Server: netip.MustParseAddr("198.51.100.20"), Lo: 41000, Hi: 41999}

// TestScopedRangeSharedBySessions: two sessions of one client to one
// server share the element, which stays until the second ends.
func TestScopedRangeSharedBySessions(t *testing.T) {
	h := ftpsHarness(t, Config{})
	a := encrypted(t, h, "192.0.2.10:40001")
	b := encrypted(t, h, "192.0.2.10:40002")
	if !h.fw.Scoped[scoped10] || len(h.fw.Scoped) != 1 {
		t.Fatalf("scoped %v", h.fw.Scoped)
	}
	h.feed(a.fin(true), a.fin(false))
	h.tr.Expire(h.ts.Add(5e9))
	h.tr.Commit()
	if !h.fw.Scoped[scoped10] {
		t.Fatal("the first session's end closed the second's range")
	}
	h.feed(b.fin(true), b.fin(false))
	h.tr.Expire(h.ts.Add(10e9))
	h.tr.Commit()
	if len(h.fw.Scoped) != 0 {
		t.Errorf("left after both ended: %v", h.fw.Scoped)
	}
}

// TestScopedRangeCaps: a client's sessions beyond its cap get no range.
func TestScopedRangeCaps(t *testing.T) {
	h := ftpsHarness(t, Config{MaxScopedPerClient: 2})
	for i := range 3 {
		encrypted(t, h, netip.AddrPortFrom(netip.MustParseAddr("192.0.2.10"), uint16(40001+i)).String())
	}
	if st := h.tr.Stats(); st.ScopedOpened != 2 || st.ScopedRefused != 1 || st.Scoped != 2 {
		t.Errorf("stats %+v", st)
	}
	// Another client has its own cap.
	encrypted(t, h, "192.0.2.11:40001")
	if st := h.tr.Stats(); st.ScopedOpened != 3 {
		t.Errorf("another client: stats %+v", st)
	}
}

// TestScopedRangeNeedsARange: a server without a configured range gets
// nothing.
func TestScopedRangeNeedsARange(t *testing.T) {
	h := newHarness(t, Config{})
	encrypted(t, h, "192.0.2.10:40001")
	if len(h.fw.Scoped) != 0 || h.tr.Stats().ScopedRefused != 1 {
		t.Errorf("scoped %v, stats %+v", h.fw.Scoped, h.tr.Stats())
	}
}
