package nat

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// These tests run the proxy's relays on loopback TCP connections, handed
// to the proxy as tproxy would (adopt): no root, no kernel NAT, the same
// byte pump and the same hand-over to the loop.

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan *net.TCPConn, 1)
	go func() {
		c, err := ln.AcceptTCP()
		if err != nil {
			done <- nil
			return
		}
		done <- c
	}()
	a, err = net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	if b = <-done; b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// proxyLab is a proxy with one adopted connection between a client and
// a server program, and a loop that handles its events with handle.
type proxyLab struct {
	p              *Proxy
	client, server *net.TCPConn // the programs' ends
	id             uint64
}

var labTranslation = Translation{
	Client: netip.MustParseAddrPort("192.0.2.2:40000"), Server: netip.MustParseAddrPort("198.51.100.20:21"),
	ServerSeen: netip.MustParseAddrPort("203.0.113.1:21"), ClientSeen: netip.MustParseAddrPort("198.51.100.1:40000"),
}

func newProxyLab(t *testing.T, cfg ProxyConfig) *proxyLab {
	t.Helper()
	p, err := newProxy(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return &proxyLab{p: p}
}

// openedLab is a lab whose one connection the loop has been told of.
func openedLab(t *testing.T) *proxyLab {
	t.Helper()
	l := newProxyLab(t, ProxyConfig{})
	l.connect(t, src)
	l.until(t, Opened, nil)
	return l
}

// connect adopts a new connection of src, as open does once both ends
// are connected.
func (l *proxyLab) connect(t *testing.T, src netip.Prefix) {
	t.Helper()
	clientApp, proxyClient := tcpPair(t)
	proxyServer, serverApp := tcpPair(t)
	if why := l.p.reserve(src); why != "" {
		t.Fatalf("reserve: %s", why)
	}
	l.p.adopt(proxyClient, proxyServer, labTranslation, src)
	l.client, l.server = clientApp, serverApp
}

// wait reports whether the proxy has events for the loop within d.
func (l *proxyLab) wait(d time.Duration) bool {
	fds := []unix.PollFd{{Fd: int32(l.p.Fd()), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, int(d/time.Millisecond))
	return err == nil && n > 0
}

// round waits for events and handles them as the daemon's loop does:
// Read, handle each, then Release. It returns the events of the round.
func (l *proxyLab) round(t *testing.T, handle func(*Event)) []Event {
	t.Helper()
	if !l.wait(5 * time.Second) {
		t.Fatal("no event within 5s")
	}
	var got []Event
	l.p.Read(func(ev *Event) {
		if ev.Kind == Opened {
			l.id = ev.ID
		}
		if handle != nil {
			handle(ev)
		}
		got = append(got, *ev)
	})
	l.p.Release()
	return got
}

// passer is a loop that sends on what it reads, unchanged, or changed
// by rewrite.
type passer struct {
	through [2]uint32
	rewrite func([]byte) []byte
}

func (p *passer) handle(ev *Event) {
	if ev.Kind != Bytes {
		return
	}
	d := 0
	if ev.FromServer {
		d = 1
	}
	p.through[d] += uint32(len(ev.Data))
	ev.Out, ev.Through = ev.Data, p.through[d]
	if p.rewrite != nil {
		ev.Out = p.rewrite(ev.Data)
	}
}

// until runs rounds until an event of kind comes, and returns it.
func (l *proxyLab) until(t *testing.T, kind EventKind, handle func(*Event)) Event {
	t.Helper()
	for range 20 {
		for _, ev := range l.round(t, handle) {
			if ev.Kind == kind {
				return ev
			}
		}
	}
	t.Fatalf("no event of kind %d", kind)
	return Event{}
}

func readWithin(c net.Conn, n int, d time.Duration) (string, error) {
	c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, n)
	got, err := io.ReadFull(c, buf)
	return string(buf[:got]), err
}

var src = netip.MustParsePrefix("192.0.2.2/32")

// TestProxyRelaysWhatTheLoopSays: bytes read from either side go to the
// loop; what the loop puts in Out goes on instead, and the loop's
// Through for one side is the Ack of the other side's next read.
func TestProxyRelaysWhatTheLoopSays(t *testing.T) {
	l := newProxyLab(t, ProxyConfig{})
	l.connect(t, src)
	if ev := l.until(t, Opened, nil); ev.Conn != labTranslation {
		t.Fatalf("opened with %+v", ev.Conn)
	}
	handle := (&passer{rewrite: func(b []byte) []byte {
		return bytes.ReplaceAll(b, []byte("192,0,2,2"), []byte("203,0,113,1"))
	}}).handle
	l.client.Write([]byte("PORT 192,0,2,2,156,64\r\n"))
	if ev := l.until(t, Bytes, handle); ev.FromServer || string(ev.Data) != "PORT 192,0,2,2,156,64\r\n" || ev.Ack != 0 {
		t.Fatalf("client bytes: %+v", ev)
	}
	if got, err := readWithin(l.server, len("PORT 203,0,113,1,156,64\r\n"), 2*time.Second); got != "PORT 203,0,113,1,156,64\r\n" {
		t.Fatalf("the server got %q (%v)", got, err)
	}
	l.server.Write([]byte("200 ok\r\n"))
	ev := l.until(t, Bytes, handle)
	if !ev.FromServer || string(ev.Data) != "200 ok\r\n" {
		t.Fatalf("server bytes: %+v", ev)
	}
	if want := uint32(len("PORT 192,0,2,2,156,64\r\n")); ev.Ack != want {
		t.Errorf("server bytes acknowledge %d of the client's, want the %d that went on", ev.Ack, want)
	}
	if got, _ := readWithin(l.client, len("200 ok\r\n"), 2*time.Second); got != "200 ok\r\n" {
		t.Fatalf("the client got %q", got)
	}
}

// TestProxyHoldsBytesUntilRelease: nothing goes on before the loop has
// released the round that read it (the loop commits what the bytes
// opened in between: the far side may connect the moment it reads them).
func TestProxyHoldsBytesUntilRelease(t *testing.T) {
	l := openedLab(t)
	l.server.Write([]byte("227 Entering Passive Mode (198,51,100,20,195,80)\r\n"))
	if !l.wait(5 * time.Second) {
		t.Fatal("no event")
	}
	var held []*Event
	pass := &passer{}
	l.p.Read(func(ev *Event) {
		pass.handle(ev)
		if ev.Kind == Bytes {
			held = append(held, ev)
		}
	})
	if len(held) != 1 {
		t.Fatalf("%d byte events", len(held))
	}
	if got, err := readWithin(l.client, 1, 300*time.Millisecond); got != "" || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the client read %q (%v) before the round was released", got, err)
	}
	l.p.Release()
	want := "227 Entering Passive Mode (198,51,100,20,195,80)\r\n"
	if got, _ := readWithin(l.client, len(want), 2*time.Second); got != want {
		t.Fatalf("after Release the client got %q", got)
	}
}

// TestProxyCloseVerdict: a loop that says Close ends the connection:
// neither program gets the bytes, both see it closed, and the loop hears
// why.
func TestProxyCloseVerdict(t *testing.T) {
	l := openedLab(t)
	l.client.Write([]byte("USER x\r\n"))
	ev := l.until(t, Closed, func(ev *Event) {
		if ev.Kind == Bytes {
			ev.Close = true
		}
	})
	if ev.Reason != "ended by ftpgate" {
		t.Errorf("closed for %q", ev.Reason)
	}
	if got, err := readWithin(l.server, 1, 2*time.Second); got != "" || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the server read %q, %v: want the connection closed", got, err)
	}
	if l.p.Open() != 0 {
		t.Errorf("%d connections held after the close", l.p.Open())
	}
}

// TestProxyHalfClose: a side that closes is an EOF for the loop and a
// half close for the other program, which can still answer; the
// connection ends when both have closed.
func TestProxyHalfClose(t *testing.T) {
	l := openedLab(t)
	pass := (&passer{}).handle
	l.client.CloseWrite()
	if ev := l.until(t, EOF, pass); ev.FromServer {
		t.Fatalf("EOF from the server, want the client's")
	}
	if _, err := readWithin(l.server, 1, 2*time.Second); !errors.Is(err, io.EOF) {
		t.Fatalf("the server did not see the client's close: %v", err)
	}
	l.server.Write([]byte("221 bye\r\n"))
	l.until(t, Bytes, pass)
	if got, _ := readWithin(l.client, len("221 bye\r\n"), 2*time.Second); got != "221 bye\r\n" {
		t.Fatalf("the client got %q after its half close", got)
	}
	l.server.Close()
	if ev := l.until(t, Closed, pass); !strings.Contains(ev.Reason, "closed by") {
		t.Errorf("closed for %q", ev.Reason)
	}
}

// TestProxyCloseConn: the tracker ending a session closes its
// connection, and the loop is told nothing more of it.
func TestProxyCloseConn(t *testing.T) {
	l := openedLab(t)
	l.p.CloseConn(l.id)
	if _, err := readWithin(l.client, 1, 2*time.Second); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the client's connection stayed open: %v", err)
	}
	for deadline := time.Now().Add(500 * time.Millisecond); time.Now().Before(deadline); {
		if l.wait(100 * time.Millisecond) {
			l.p.Read(func(ev *Event) {
				if ev.Kind == Closed || ev.Kind == Bytes {
					t.Errorf("told of %+v after CloseConn", *ev)
				}
			})
			l.p.Release()
		}
	}
	if l.p.Open() != 0 {
		t.Errorf("%d connections held", l.p.Open())
	}
}

// TestProxyShares: the caps count connections still connecting; one
// source holds at most its share, another still gets in; a closed
// connection gives its place back.
func TestProxyShares(t *testing.T) {
	l := newProxyLab(t, ProxyConfig{MaxConns: 3, MaxPerSource: 2})
	other := netip.MustParsePrefix("192.0.2.3/32")
	for i := range 2 {
		if why := l.p.reserve(src); why != "" {
			t.Fatalf("reserve %d: %s", i, why)
		}
	}
	if why := l.p.reserve(src); why == "" {
		t.Fatal("a source took a third place with a share of two")
	}
	if why := l.p.reserve(other); why != "" {
		t.Fatalf("another source: %s", why)
	}
	if why := l.p.reserve(netip.MustParsePrefix("192.0.2.4/32")); why == "" {
		t.Fatal("a fourth place with a cap of three")
	}
	// One of src's connects and then ends: its place comes back.
	_, proxyClient := tcpPair(t)
	proxyServer, _ := tcpPair(t)
	l.p.adopt(proxyClient, proxyServer, labTranslation, src)
	l.until(t, Opened, nil)
	if why := l.p.reserve(src); why == "" {
		t.Fatal("a source took a third place with two connected or connecting")
	}
	l.p.CloseConn(l.id)
	if why := l.p.reserve(src); why != "" {
		t.Errorf("after one of its connections ended, src: %s", why)
	}
}

// TestProxyCloseWhileConnecting: a connection that finishes connecting
// after Close has begun is closed, not adopted.
func TestProxyCloseWhileConnecting(t *testing.T) {
	p, err := newProxy(ProxyConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if why := p.reserve(src); why != "" {
		t.Fatal(why)
	}
	clientApp, proxyClient := tcpPair(t)
	proxyServer, _ := tcpPair(t)
	done := make(chan struct{})
	go func() { p.Close(); close(done) }()
	for closing := false; !closing; {
		time.Sleep(time.Millisecond)
		p.mu.Lock()
		closing = p.closed
		p.mu.Unlock()
	}
	p.adopt(proxyClient, proxyServer, labTranslation, src)
	<-done
	if _, err := readWithin(clientApp, 1, 2*time.Second); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the client's connection stayed open after Close: %v", err)
	}
	if p.Open() != 0 {
		t.Errorf("%d connections held after Close", p.Open())
	}
}
