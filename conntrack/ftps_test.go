package conntrack

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ftpgate/ftpgate/rules"
)

func ftpsHarness(t *testing.T, cfg Config) *harness {
	cfg.ControlPorts = []uint16{21, 990}
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

// TLS records as the endpoints send them: the first carries the hello,
// the others opaque data.
func record(typ byte, body string) string {
	return string([]byte{typ, 3, 3, byte(len(body) >> 8), byte(len(body))}) + body
}

var (
	clientHello = record(tlsHandshake, "\x01"+strings.Repeat("h", 40))
	serverHello = record(tlsHandshake, "\x02"+strings.Repeat("s", 60)) + record(tlsApplicationData, strings.Repeat("e", 80))
	appData     = record(tlsApplicationData, strings.Repeat("d", 40))
)

// handshake plays a TLS handshake that completes and a login: the
// server answers three of the client's data records after the hellos.
func handshake(h *harness, c *conn) {
	h.feed(c.send(true, clientHello), c.send(false, serverHello))
	for range tlsRoundsNeeded {
		h.feed(c.send(true, appData), c.send(false, appData))
	}
}

// TestExplicitRangeNeedsTLS: after an accepted AUTH the range opens, and
// closes again unless the session really speaks TLS: when no handshake
// completes within the handshake timeout, and at once when the client
// sends what is not TLS. A session that completed its handshake keeps it
// past that time.
func TestExplicitRangeNeedsTLS(t *testing.T) {
	t.Run("no TLS byte", func(t *testing.T) {
		h := ftpsHarness(t, Config{HandshakeTimeout: 5 * time.Second})
		encrypted(t, h, "192.0.2.10:40001")
		if !h.fw.Scoped[scoped10] {
			t.Fatalf("no range after the 234: %v", h.fw.Scoped)
		}
		h.tr.Expire(h.ts.Add(6 * time.Second))
		h.tr.Commit()
		if len(h.fw.Scoped) != 0 {
			t.Fatalf("range open past the handshake timeout without a byte of TLS: %v", h.fw.Scoped)
		}
		if n := h.tr.Stats().ScopedClosedBy[closedNotTLS]; n != 1 {
			t.Errorf("closed as not TLS: %d", n)
		}
	})
	t.Run("plain text", func(t *testing.T) {
		h := ftpsHarness(t, Config{})
		c := encrypted(t, h, "192.0.2.10:40001")
		h.feed(c.send(true, "PASV\r\n"))
		if len(h.fw.Scoped) != 0 {
			t.Fatalf("range open after the client spoke plain text: %v", h.fw.Scoped)
		}
	})
	t.Run("handshake", func(t *testing.T) {
		h := ftpsHarness(t, Config{HandshakeTimeout: 5 * time.Second})
		c := encrypted(t, h, "192.0.2.10:40001")
		handshake(h, c)
		h.tr.Expire(h.ts.Add(6 * time.Second))
		h.tr.Commit()
		if !h.fw.Scoped[scoped10] {
			t.Fatalf("a session that spoke TLS lost its range: %v", h.fw.Scoped)
		}
	})
}

// TestImplicitRangeOnlyAfterHandshake: on port 990 the range opens once
// the handshake completed both ways, never for a lone ClientHello, an
// echo of it, or a few bytes that look like records.
func TestImplicitRangeOnlyAfterHandshake(t *testing.T) {
	implicitSession := func(t *testing.T) (*harness, *conn) {
		h := ftpsHarness(t, Config{})
		c := newConn(t, "192.0.2.10:40001", "198.51.100.20:990")
		h.feed(c.handshake()...)
		return h, c
	}
	for name, play := range map[string]func(h *harness, c *conn){
		"lone ClientHello": func(h *harness, c *conn) { h.feed(c.send(true, clientHello)) },
		"ClientHello echoed": func(h *harness, c *conn) {
			h.feed(c.send(true, clientHello), c.send(false, clientHello), c.send(true, appData), c.send(false, appData))
		},
		"two 6-byte records": func(h *harness, c *conn) {
			h.feed(c.send(true, record(tlsHandshake, "\x01")), c.send(false, record(tlsHandshake, "\x02")))
			h.feed(c.send(true, record(tlsApplicationData, "x")), c.send(false, record(tlsApplicationData, "y")))
		},
		"data only before the server's hello was answered": func(h *harness, c *conn) {
			h.feed(c.send(true, clientHello+appData), c.send(false, serverHello+appData))
		},
		"TLS 1.3 flight throttled, a ChangeCipherSpec and no Finished": func(h *harness, c *conn) {
			h.feed(c.send(true, clientHello))
			h.feed(c.send(false, record(tlsHandshake, "\x02"+strings.Repeat("s", 86))+record(20, "\x01")))
			h.feed(c.send(true, record(20, "\x01")))
			h.feed(c.send(false, record(tlsApplicationData, strings.Repeat("c", 900))))
		},
		"one round, then silence": func(h *harness, c *conn) {
			h.feed(c.send(true, clientHello), c.send(false, serverHello))
			h.feed(c.send(true, appData), c.send(false, appData))
		},
	} {
		t.Run(name, func(t *testing.T) {
			h, c := implicitSession(t)
			play(h, c)
			if len(h.fw.Scoped) != 0 {
				t.Fatalf("range opened: %v", h.fw.Scoped)
			}
		})
	}
	t.Run("completed", func(t *testing.T) {
		h, c := implicitSession(t)
		handshake(h, c)
		if !h.fw.Scoped[scoped10] {
			t.Fatalf("no range after a completed handshake: %v", h.fw.Scoped)
		}
	})
}

// TestActiveFTPSScopedToClientPorts: implicit FTPS in active mode admits
// the server's port 989 only to the client's configured active ports; a
// client with no range configured gets none.
func TestActiveFTPSScopedToClientPorts(t *testing.T) {
	h := ftpsHarness(t, Config{ActiveRanges: []ActiveRange{{Client: netip.MustParsePrefix("192.0.2.0/28"), Lo: 50000, Hi: 50099}}})
	for _, client := range []string{"192.0.2.10:40001", "192.0.2.20:40001"} {
		c := newConn(t, client, "198.51.100.20:990")
		h.feed(c.handshake()...)
		handshake(h, c)
	}
	want := rules.ScopedRange{Client: netip.MustParseAddr("192.0.2.10"), Server: netip.MustParseAddr("198.51.100.20"), Active: true, Lo: 50000, Hi: 50099}
	actives := 0
	for r := range h.fw.Scoped {
		if r.Active {
			actives++
			if r != want {
				t.Errorf("active element %v, want %v", r, want)
			}
		}
	}
	if actives != 1 {
		t.Errorf("%d active elements, want the configured client's only: %v", actives, h.fw.Scoped)
	}
}

// TestScopedSharePerSlash64: twenty sessions from twenty addresses of
// one IPv6 /64 take that /64's share, not the gateway's cap; another
// /64 still gets its range.
func TestScopedSharePerSlash64(t *testing.T) {
	h := newHarness(t, Config{MaxScopedPerClient: 8, MaxScoped: 20,
		FTPSRanges: []FTPSRange{{Server: netip.MustParsePrefix("2001:db8:2::20/128"), Lo: 41000, Hi: 41999}}})
	open := func(client string) {
		c := newConn(t, client, "[2001:db8:2::20]:21")
		h.feed(c.handshake()...)
		h.feed(c.send(false, "220 hello\r\n"), c.send(true, "AUTH TLS\r\n"), c.send(false, "234 Proceed\r\n"))
	}
	for i := range 20 {
		open(fmt.Sprintf("[2001:db8:1::%x]:40000", 0x100+i))
	}
	if n := h.tr.Stats().Scoped; n != 8 {
		t.Fatalf("%d ranges open for one /64, want its share of 8", n)
	}
	open("[2001:db8:9::1]:40000")
	if n := h.tr.Stats().Scoped; n != 9 {
		t.Errorf("another /64 got no range: %d open", n)
	}
}

// TestHeldSYNAdmittedFromRange: a data SYN of an encrypted session that
// the kernel held because its range was not committed yet is admitted
// from the range ftpgate holds; one outside it, or from another client,
// is not.
func TestHeldSYNAdmittedFromRange(t *testing.T) {
	h := ftpsHarness(t, Config{})
	encrypted(t, h, "192.0.2.10:40001")
	in := newConn(t, "192.0.2.10:50000", "198.51.100.20:41234")
	out := newConn(t, "192.0.2.10:50001", "198.51.100.20:42000")
	other := newConn(t, "192.0.2.11:50000", "198.51.100.20:41234")
	for _, c := range []struct {
		c    *conn
		want HeldVerdict
	}{{in, HeldAdmit}, {out, HeldPass}, {other, HeldPass}} {
		if got := h.tr.AdmitHeldSYN(c.c.packet(true, c.c.cseq, "S", nil)[14:]); got != c.want {
			t.Errorf("SYN %v -> %v: %v, want %v", c.c.client, c.c.server, got, c.want)
		}
	}
}
