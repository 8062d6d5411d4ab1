package capture

import (
	"net"
	"net/netip"
	"os"
	"testing"
	"time"
)

// TestLocalSockets asks the kernel about this test's own sockets: the
// listener and its owner, a connection's owner while it is open, and no
// owner once the connection was closed (the kernel then reports the
// leftover as root's).
func TestLocalSockets(t *testing.T) {
	ls, err := OpenLocalSockets()
	if err != nil {
		t.Fatal(err)
	}
	defer ls.Close()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	at := netip.MustParseAddrPort(ln.Addr().String())
	uid := uint32(os.Getuid())
	if got, ok := ls.Listener(at, netip.MustParseAddrPort("127.0.0.1:1")); !ok || got != uid {
		t.Fatalf("Listener(%v) = %d, %v; want %d", at, got, ok, uid)
	}
	if !ls.Listening(at) {
		t.Fatalf("Listening(%v) = false", at)
	}
	c, err := net.Dial("tcp4", at.String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	local := netip.MustParseAddrPort(c.LocalAddr().String())
	if got, ok := ls.Owner(local, at); !ok || got != uid {
		t.Fatalf("Owner(%v) = %d, %v; want %d", local, got, ok, uid)
	}
	c.Close()
	time.Sleep(50 * time.Millisecond)
	if got, ok := ls.Owner(local, at); ok {
		t.Errorf("Owner after the client closed = %d, true; want no owner", got)
	}
	if !ls.IsLocal(netip.MustParseAddr("127.0.0.1")) || ls.IsLocal(netip.MustParseAddr("198.51.100.99")) {
		t.Errorf("IsLocal wrong for 127.0.0.1 or 198.51.100.99")
	}
}
