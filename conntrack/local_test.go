package conntrack

import (
	"net/netip"
	"testing"
)

// fakeSockets stands in for this host's sockets.
type fakeSockets struct {
	local     map[netip.Addr]bool
	owners    map[netip.AddrPort]uint32 // control connection's local end -> uid
	listeners map[netip.AddrPort]uint32
}

func (f fakeSockets) IsLocal(a netip.Addr) bool { return f.local[a] }

func (f fakeSockets) Owner(local, _ netip.AddrPort) (uint32, bool) {
	uid, ok := f.owners[local]
	return uid, ok
}

func (f fakeSockets) Listener(local, _ netip.AddrPort) (uint32, bool) {
	uid, ok := f.listeners[local]
	return uid, ok
}

// TestLocalAnnouncerMustOwnTheListener: an FTP client on the gateway
// itself may announce only a port its own user listens on: an
// unprivileged user's PORT naming root's service on 8443 is refused, its
// own listener opens, a port nobody listens on is refused.
func TestLocalAnnouncerMustOwnTheListener(t *testing.T) {
	gw := netip.MustParseAddr("192.0.2.1")
	fs := fakeSockets{
		local:  map[netip.Addr]bool{gw: true},
		owners: map[netip.AddrPort]uint32{netip.MustParseAddrPort("192.0.2.1:40000"): 65534},
		listeners: map[netip.AddrPort]uint32{netip.MustParseAddrPort("192.0.2.1:8443"): 0,
			netip.MustParseAddrPort("192.0.2.1:45000"): 65534},
	}
	h := newHarness(t, Config{LocalSockets: fs})
	c := newConn(t, "192.0.2.1:40000", srv)
	h.feed(c.greeted()...)
	h.feed(c.send(true, "PORT 192,0,2,1,32,251\r\n"), c.send(false, "200 ok\r\n"))
	if len(h.open()) != 0 || h.lastChannel().Refusal != refusedLocalSocket {
		t.Fatalf("root's port 8443 announced by uid 65534: pinholes %v, %+v", h.open(), h.lastChannel())
	}
	h.feed(c.send(true, "PORT 192,0,2,1,175,200\r\n"), c.send(false, "200 ok\r\n"))
	if !h.open()[pin("198.51.100.20", "192.0.2.1", 45000)] {
		t.Fatalf("the user's own listener was refused: %+v", h.lastChannel())
	}
	h.feed(c.send(true, "PORT 192,0,2,1,195,80\r\n"), c.send(false, "200 ok\r\n"))
	if h.lastChannel().Refusal != refusedLocalSocket {
		t.Fatalf("a port nobody listens on: %+v", h.lastChannel())
	}
	// A forwarded client is not asked about.
	f := newConn(t, "192.0.2.10:40000", srv)
	h.feed(f.greeted()...)
	h.feed(f.send(true, "PORT 192,0,2,10,195,80\r\n"), f.send(false, "200 ok\r\n"))
	if !h.open()[pin("198.51.100.20", "192.0.2.10", 50000)] {
		t.Fatalf("a forwarded client's PORT was refused: %+v", h.lastChannel())
	}
}

// TestLocalServerDroppingPrivileges: a server on the gateway that
// accepted its control connection as root and answers PASV from a
// session process of another user (vsftpd) announces that user's
// listener: allowed, root's sockets choose for themselves.
func TestLocalServerDroppingPrivileges(t *testing.T) {
	gw := netip.MustParseAddr("192.0.2.1")
	fs := fakeSockets{
		local:     map[netip.Addr]bool{gw: true},
		owners:    map[netip.AddrPort]uint32{netip.MustParseAddrPort("192.0.2.1:21"): 0, netip.MustParseAddrPort("192.0.2.1:2121"): 1000},
		listeners: map[netip.AddrPort]uint32{netip.MustParseAddrPort("192.0.2.1:40000"): 65534, netip.MustParseAddrPort("192.0.2.1:40001"): 65534},
	}
	h := newHarness(t, Config{LocalSockets: fs, ControlPorts: []uint16{21, 2121}})
	c := newConn(t, cli, "192.0.2.1:21")
	h.feed(c.greeted()...)
	h.feed(c.send(true, "PASV\r\n"), c.send(false, "227 Entering Passive Mode (192,0,2,1,156,64)\r\n"))
	if !h.open()[pin("192.0.2.10", "192.0.2.1", 40000)] {
		t.Fatalf("vsftpd's session user's listener refused: %+v", h.lastChannel())
	}
	// A server of user 1000 announcing a listener of user 65534.
	u := newConn(t, cli, "192.0.2.1:2121")
	h.feed(u.greeted()...)
	h.feed(u.send(true, "PASV\r\n"), u.send(false, "227 Entering Passive Mode (192,0,2,1,156,65)\r\n"))
	if h.lastChannel().Refusal != refusedLocalSocket {
		t.Fatalf("a user's server announced another user's listener: %+v", h.lastChannel())
	}
}
