package conntrack

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// TestSessionSharePerClient: one client holding many sessions takes its
// share of --max-sessions, not the whole cap; another client still gets
// in, and the share frees as sessions end.
func TestSessionSharePerClient(t *testing.T) {
	h := newHarness(t, Config{MaxSessions: 50})
	var conns []*conn
	for i := range 50 {
		c := newConn(t, fmt.Sprintf("192.0.2.10:%d", 40000+i), srv)
		h.feed(c.greeted()...)
		conns = append(conns, c)
	}
	st := h.tr.Stats()
	if st.SessionsStarted != 4 || st.SessionsRefused != 46 {
		t.Fatalf("one client: %d sessions started, %d refused; want its share of 4", st.SessionsStarted, st.SessionsRefused)
	}
	other := newConn(t, "192.0.2.11:40000", srv)
	h.feed(other.greeted()...)
	h.feed(other.send(true, "PASV\r\n"), other.send(false, "227 Entering Passive Mode (198,51,100,20,156,90)\r\n"))
	if !h.open()[pin("192.0.2.11", "198.51.100.20", 156*256+90)] {
		t.Fatalf("another client was shut out: %v", h.open())
	}
	h.feed(conns[0].fin(true), conns[0].fin(false))
	again := newConn(t, "192.0.2.10:41000", srv)
	h.feed(again.greeted()...)
	if n := h.tr.Stats().SessionsStarted; n != 6 {
		t.Errorf("after one of its sessions ended, the client got no new one: %d started", n)
	}
}

// TestHalfOpenSharePerClient: SYNs from one source fill only its share of
// the half-open cap.
func TestHalfOpenSharePerClient(t *testing.T) {
	h := newHarness(t, Config{MaxHalfOpen: 64})
	for i := range 64 {
		c := newConn(t, fmt.Sprintf("[2001:db8:1::%x]:40000", i+1), "[2001:db8:2::20]:21")
		h.feed(c.packet(true, c.cseq, "S", nil))
	}
	if st := h.tr.Stats(); st.HalfOpen != 4 {
		t.Fatalf("%d half-open from one /64, want its share of 4", st.HalfOpen)
	}
	c := newConn(t, "[2001:db8:3::1]:40000", "[2001:db8:2::20]:21")
	h.feed(c.greeted()...)
	if n := h.tr.Stats().SessionsStarted; n != 1 {
		t.Errorf("a session from another /64 was not tracked")
	}
}

// TestProxiedSessionsExpire: a proxied session whose server never
// speaks, one that goes idle, and one whose other side never closes all
// end on the timeouts, and the proxy is told to close them.
func TestProxiedSessionsExpire(t *testing.T) {
	var closed []uint64
	h := newHarness(t, Config{Inline: true, HandshakeTimeout: 5 * time.Second, IdleTimeout: 45 * time.Second,
		ProxyConns: closeConnFunc(func(id uint64) { closed = append(closed, id) })})
	tr := forwarded
	h.tr.OpenProxied(1, tr, h.ts) // the server never speaks
	tr.Client = netip.AddrPortFrom(tr.Client.Addr(), 40001)
	h.tr.OpenProxied(2, tr, h.ts)
	h.tr.ProxiedBytes(2, true, []byte("220 hi\r\n"), 0, h.ts)
	tr.Client = netip.AddrPortFrom(tr.Client.Addr(), 40002)
	h.tr.OpenProxied(3, tr, h.ts)
	h.tr.ProxiedBytes(3, true, []byte("220 hi\r\n"), 0, h.ts)
	h.tr.ProxiedEOF(3, true, h.ts)
	h.tr.Expire(h.ts.Add(6 * time.Second))
	if fmt.Sprint(closed) != "[1]" {
		t.Fatalf("after the handshake timeout: closed %v, want [1]", closed)
	}
	h.tr.ProxiedBytes(3, false, []byte("NOOP\r\n"), 8, h.ts.Add(30*time.Second))
	h.tr.Expire(h.ts.Add(46 * time.Second))
	if fmt.Sprint(closed) != "[1 2]" {
		t.Fatalf("after the idle timeout: closed %v, want [1 2]", closed)
	}
	h.tr.Expire(h.ts.Add(closeLinger + time.Second))
	if fmt.Sprint(closed) != "[1 2 3]" || h.tr.Stats().Proxied != 0 {
		t.Fatalf("after the close linger: closed %v, %d proxied left", closed, h.tr.Stats().Proxied)
	}
}
