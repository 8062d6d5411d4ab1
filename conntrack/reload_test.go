package conntrack

import (
	"net/netip"
	"testing"
	"time"
)

// TestReloadAppliesRemovals: a reload that takes a server's FTPS range,
// the server itself, or a control port out of the configuration closes
// what they gave live sessions, at once, and new sessions get nothing.
func TestReloadAppliesRemovals(t *testing.T) {
	base := Reconfigurable{MinDataPort: 1024, PinholeTimeout: time.Minute, IdleTimeout: time.Hour, HandshakeTimeout: 10 * time.Second,
		MaxPinholesPerSession: 4, ControlPorts: []uint16{21, 2121}, ImplicitPorts: []uint16{990}}
	served := ServerPolicy{Prefix: netip.MustParsePrefix("198.51.100.20/32")}
	t.Run("FTPS range", func(t *testing.T) {
		h := ftpsHarness(t, Config{})
		encrypted(t, h, "192.0.2.10:40001")
		if len(h.fw.Scoped) != 1 {
			t.Fatalf("no range to take away: %v", h.fw.Scoped)
		}
		done := h.tr.Reconfigure(base)
		h.tr.Commit()
		if len(h.fw.Scoped) != 0 || done.RangesClosed != 1 {
			t.Fatalf("after the range left the configuration: %v (%+v)", h.fw.Scoped, done)
		}
		encrypted(t, h, "192.0.2.10:40002")
		if len(h.fw.Scoped) != 0 {
			t.Fatalf("a new session got the removed range: %v", h.fw.Scoped)
		}
	})
	t.Run("server entry", func(t *testing.T) {
		h := newHarness(t, Config{Servers: []ServerPolicy{served}})
		c := newConn(t, cli, srv)
		h.feed(c.greeted()...)
		h.feed(c.send(true, "PASV\r\n"), c.send(false, "227 Entering Passive Mode (198,51,100,20,156,91)\r\n"))
		if len(h.open()) != 1 {
			t.Fatalf("no pinhole to take away")
		}
		r := base
		r.Servers = []ServerPolicy{{Prefix: netip.MustParsePrefix("198.51.100.99/32")}}
		done := h.tr.Reconfigure(r)
		h.tr.Commit()
		if len(h.open()) != 0 || done.PinholesClosed != 1 {
			t.Fatalf("after its server left the configuration: %v (%+v)", h.open(), done)
		}
		if n := h.tr.Stats().ClosedBy[closedReload]; n != 1 {
			t.Errorf("closed by reload: %d", n)
		}
		h.feed(c.send(true, "PASV\r\n"), c.send(false, "227 Entering Passive Mode (198,51,100,20,156,92)\r\n"))
		if len(h.open()) != 0 || h.lastChannel().Refusal != refusedNotServed {
			t.Fatalf("the next announcement: %v %+v", h.open(), h.lastChannel())
		}
	})
	t.Run("control port", func(t *testing.T) {
		h := newHarness(t, Config{ControlPorts: []uint16{21, 2121}})
		c := newConn(t, cli, "198.51.100.20:2121")
		h.feed(c.greeted()...)
		h.feed(c.send(true, "PASV\r\n"), c.send(false, "227 Entering Passive Mode (198,51,100,20,156,93)\r\n"))
		r := base
		r.ControlPorts = []uint16{21}
		done := h.tr.Reconfigure(r)
		h.tr.Commit()
		if len(h.open()) != 0 || done.SessionsEnded != 1 || h.tr.Stats().SessionsTracked != 0 {
			t.Fatalf("after its port left the configuration: pinholes %v, %+v", h.open(), done)
		}
	})
}
