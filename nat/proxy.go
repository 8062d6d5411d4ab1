package nat

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/ftpgate/ftpgate/internal/handoff"
	"github.com/ftpgate/ftpgate/internal/source"
)

// EventKind says what happened on the control proxy.
type EventKind uint8

const (
	// Opened: a translated control connection reached the proxy, and
	// the proxy reached its server (Conn).
	Opened EventKind = iota
	// Bytes are what the proxy read from one side (Data; Ack, how much
	// of the other side it had sent on). They wait: what the handler
	// puts in Out goes on at the next Release, and Through says how much
	// of this side has gone on in all.
	Bytes
	// EOF: one side closed.
	EOF
	// Closed: the connection ended; Reason says why.
	Closed
)

// Event is one thing the proxy hands the loop.
type Event struct {
	Kind       EventKind
	ID         uint64
	Time       time.Time
	Conn       Translation // Opened
	FromServer bool        // Bytes, EOF: the server's side
	Data       []byte      // Bytes
	Ack        uint32      // Bytes: of the other side, what the proxy had sent on when it read them
	Reason     string      // Closed
	// Out, Through and Close are set by whoever handles Bytes: what to
	// send on, how much of this side has gone on in all, and whether the
	// connection must close instead.
	Out     []byte
	Through uint32
	Close   bool
	verdict chan verdict
}

// ProxyConfig says how the control proxy runs.
type ProxyConfig struct {
	// Port on 127.0.0.1 and ::1 that ftpgate's tproxy rules send
	// translated control connections to.
	Port uint16
	// SocketMark is set on every socket of the proxy (SO_MARK), so that
	// ftpgate's chains know their packets.
	SocketMark uint32
	// MaxConns bounds the connections proxied at once, those still
	// connecting to their server included; MaxPerSource bounds those of
	// one source (an address, an IPv6 /64). More are closed at once.
	MaxConns, MaxPerSource int
	// ConnectTimeout bounds the connection to the server.
	ConnectTimeout time.Duration
	// NoIPv6 listens on 127.0.0.1 only (see IPv6Enabled).
	NoIPv6 bool
	Log    *slog.Logger
}

// Proxy is the control proxy: it terminates translated control
// connections and connects to their servers from the client's own
// address (IP_TRANSPARENT). It decides nothing: every chunk of bytes it
// reads, either way, goes to the loop as an Event of kind Bytes, and what
// the handler puts in Out goes on at Release, after the loop's Tick has
// committed what the bytes made ftpgate open. A connection that opens, a
// side that closes, and a connection that ends are Events of kinds
// Opened, EOF and Closed.
type Proxy struct {
	cfg       ProxyConfig
	listeners []net.Listener
	ct        *netlink.Conn
	events    *handoff.Queue[*Event] // to the loop
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup

	mu        sync.Mutex
	delivered []*Event
	conns     map[uint64]*proxyConn
	// connecting counts connections accepted whose server connection is
	// still being made: they count against the caps like the others.
	connecting int
	bySource   source.Shares
	closed     bool // Close has begun: no connection is added
	nextID     uint64
	accepted   atomic.Uint64
	refused    atomic.Uint64
}

// verdict is what the loop said of one Bytes event.
type verdict struct {
	out     []byte
	through uint32
	closed  bool
}

type proxyConn struct {
	id     uint64
	tr     Translation
	source netip.Prefix
	client *net.TCPConn
	server *net.TCPConn
	// through, per direction (0 client, 1 server): how many bytes read
	// from that side have gone on, as the handler said; the other
	// direction's reads carry it as their Ack.
	through [2]atomic.Uint32
	ended   atomic.Int32
	reason  atomic.Pointer[string]
}

// proxyReadSize is what one read takes: control traffic is small, and
// the handler frames lines across reads itself.
const proxyReadSize = 4096

// OpenProxy starts listening. It fails if the port is taken or the
// process may not use IP_TRANSPARENT (CAP_NET_ADMIN).
func OpenProxy(cfg ProxyConfig) (*Proxy, error) {
	p, err := newProxy(cfg)
	if err != nil {
		return nil, err
	}
	if p.ct, err = netlink.Dial(unix.NETLINK_NETFILTER, nil); err != nil {
		p.Close()
		return nil, fmt.Errorf("opening a ctnetlink socket (to learn source NAT): %w", err)
	}
	lc := net.ListenConfig{Control: p.control}
	ctx := p.ctx
	addrs := []string{"127.0.0.1", "::1"}
	if cfg.NoIPv6 {
		addrs = addrs[:1]
	}
	for _, addr := range addrs {
		network := "tcp4"
		if addr == "::1" {
			network = "tcp6"
		}
		ln, err := lc.Listen(ctx, network, net.JoinHostPort(addr, fmt.Sprint(cfg.Port)))
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("control proxy: listening on port %d: %w", cfg.Port, err)
		}
		p.listeners = append(p.listeners, ln)
	}
	for _, ln := range p.listeners {
		p.wg.Add(1)
		go p.acceptLoop(ln)
	}
	return p, nil
}

// newProxy is a proxy that listens nowhere yet: connections reach it
// through adopt.
func newProxy(cfg ProxyConfig) (*Proxy, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 10000
	}
	if cfg.MaxPerSource <= 0 {
		cfg.MaxPerSource = cfg.MaxConns
	}
	events, err := handoff.New[*Event]()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Proxy{cfg: cfg, events: events, ctx: ctx, cancel: cancel, conns: map[uint64]*proxyConn{}, bySource: source.Shares{}}, nil
}

// control makes a socket transparent (it may use addresses not of this
// host, and receive connections addressed to others) and marks it.
func (p *Proxy) control(network, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		level, opt := unix.SOL_IP, unix.IP_TRANSPARENT
		if network == "tcp6" {
			level, opt = unix.SOL_IPV6, unix.IPV6_TRANSPARENT
		}
		if serr = unix.SetsockoptInt(int(fd), level, opt, 1); serr != nil {
			serr = fmt.Errorf("setting IP_TRANSPARENT (needs CAP_NET_ADMIN): %w", serr)
			return
		}
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(p.cfg.SocketMark)); serr != nil {
			serr = fmt.Errorf("setting SO_MARK: %w", serr)
			return
		}
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

func (p *Proxy) acceptLoop(ln net.Listener) {
	defer p.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if p.ctx.Err() != nil {
				return
			}
			p.cfg.Log.Warn("control proxy: accepting", "error", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		p.wg.Add(1)
		go p.open(c.(*net.TCPConn))
	}
}

// reserve takes a place for a connection of src under both caps, or says
// which one is full.
func (p *Proxy) reserve(src netip.Prefix) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case len(p.conns)+p.connecting >= p.cfg.MaxConns:
		return "full"
	case p.bySource[src] >= p.cfg.MaxPerSource:
		return "this source's share is taken"
	}
	p.connecting++
	p.bySource.Add(src)
	return ""
}

// open connects a client's connection to its server.
func (p *Proxy) open(client *net.TCPConn) {
	defer p.wg.Done()
	local := netip.MustParseAddrPort(client.LocalAddr().String())
	peer := netip.MustParseAddrPort(client.RemoteAddr().String())
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	peer = netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())
	if local.Port() == p.cfg.Port && local.Addr().IsLoopback() {
		// Someone connected to the proxy's own port: not through tproxy.
		client.Close()
		return
	}
	src := source.Of(peer.Addr())
	if why := p.reserve(src); why != "" {
		p.refused.Add(1)
		p.cfg.Log.Warn("control proxy: connection closed, "+why, "client", peer.String(), "server", local.String(),
			"max", p.cfg.MaxConns, "max_per_source", p.cfg.MaxPerSource, "source", src.String())
		client.SetLinger(0)
		client.Close()
		return
	}
	unreserve := func() {
		p.mu.Lock()
		p.connecting--
		p.bySource.Remove(src)
		p.mu.Unlock()
	}
	seen := local
	if od, err := originalDst(client); err == nil {
		seen = od
	}
	server, err := p.dial(peer.Addr(), local)
	if err != nil {
		unreserve()
		p.cfg.Log.Warn("control proxy: cannot reach the server; client's connection closed",
			"client", peer.String(), "server", local.String(), "error", err)
		client.SetLinger(0)
		client.Close()
		return
	}
	up := netip.MustParseAddrPort(server.LocalAddr().String())
	up = netip.AddrPortFrom(up.Addr().Unmap(), up.Port())
	clientSeen := up
	if r, err := conntrackReply(p.ct, up, local); err == nil {
		clientSeen = r
	} else {
		p.cfg.Log.Warn("control proxy: no source NAT learnt", "client", peer.String(), "server", local.String(), "error", err)
	}
	p.adopt(client, server, Translation{Client: peer, Server: local, ServerSeen: seen, ClientSeen: clientSeen}, src)
}

// adopt makes a client's connection and its server's, both connected,
// one proxied connection, under the place reserve took for src: the loop
// is told it opened, and its relays start.
func (p *Proxy) adopt(client, server *net.TCPConn, tr Translation, src netip.Prefix) {
	p.mu.Lock()
	p.connecting--
	if p.closed {
		// Close took its list of connections while this one connected.
		p.bySource.Remove(src)
		p.mu.Unlock()
		client.Close()
		server.Close()
		return
	}
	p.nextID++
	c := &proxyConn{id: p.nextID, tr: tr, source: src, client: client, server: server}
	p.conns[c.id] = c
	p.mu.Unlock()
	p.accepted.Add(1)
	p.push(&Event{Kind: Opened, ID: c.id, Conn: tr})
	p.wg.Add(2)
	go p.relay(c, false)
	go p.relay(c, true)
}

// dial connects to server from the client's address, with a port of the
// kernel's choosing that is not the client's own (which would make the
// two connections one conntrack entry if neither is translated).
func (p *Proxy) dial(from netip.Addr, server netip.AddrPort) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: p.cfg.ConnectTimeout, Control: p.control, LocalAddr: &net.TCPAddr{IP: from.AsSlice()}}
	network := "tcp4"
	if server.Addr().Is6() {
		network = "tcp6"
	}
	c, err := d.DialContext(p.ctx, network, server.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// originalDst is the connection's destination before destination NAT.
func originalDst(c *net.TCPConn) (netip.AddrPort, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var sa [28]byte // sockaddr_in6, the larger
	var gerr error
	v6 := netip.MustParseAddrPort(c.LocalAddr().String()).Addr().Unmap().Is6()
	err = rc.Control(func(fd uintptr) {
		level := unix.SOL_IP
		if v6 {
			level = unix.SOL_IPV6
		}
		l := uint32(len(sa))
		const soOriginalDst = 80 // SO_ORIGINAL_DST, IP6T_SO_ORIGINAL_DST
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), soOriginalDst,
			uintptr(unsafe.Pointer(&sa[0])), uintptr(unsafe.Pointer(&l)), 0)
		if errno != 0 {
			gerr = errno
		}
	})
	if err != nil {
		return netip.AddrPort{}, err
	}
	if gerr != nil {
		return netip.AddrPort{}, fmt.Errorf("SO_ORIGINAL_DST: %w", gerr)
	}
	port := uint16(sa[2])<<8 | uint16(sa[3])
	if v6 {
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(sa[8:24])), port), nil
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(sa[4:8])), port), nil
}

// relay carries one direction: each read goes to the loop, and what the
// loop says goes on.
func (p *Proxy) relay(c *proxyConn, fromServer bool) {
	defer p.wg.Done()
	src, dst := c.client, c.server
	d := 0
	if fromServer {
		src, dst, d = c.server, c.client, 1
	}
	why := "closed by the client"
	if fromServer {
		why = "closed by the server"
	}
	buf := make([]byte, proxyReadSize)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			v := p.submit(c, fromServer, buf[:n], c.through[1-d].Load())
			if v.closed {
				p.finish(c, "ended by ftpgate")
				return
			}
			// Before the write: the other side may answer these bytes
			// the moment they arrive, and its reply must find them
			// counted.
			c.through[d].Store(v.through)
			if len(v.out) > 0 {
				if _, werr := dst.Write(v.out); werr != nil {
					p.finish(c, "write failed: "+werr.Error())
					return
				}
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				why = "read failed: " + err.Error()
			}
			break
		}
	}
	_ = dst.CloseWrite()
	if c.ended.Add(1) == 2 {
		p.finish(c, why)
		return
	}
	if p.ctx.Err() == nil {
		p.push(&Event{Kind: EOF, ID: c.id, FromServer: fromServer})
	}
}

// submit hands bytes to the loop and waits for what to send on.
func (p *Proxy) submit(c *proxyConn, fromServer bool, data []byte, ack uint32) verdict {
	ev := &Event{Kind: Bytes, ID: c.id, FromServer: fromServer, Data: append([]byte(nil), data...), Ack: ack,
		verdict: make(chan verdict, 1)}
	p.push(ev)
	select {
	case v := <-ev.verdict:
		return v
	case <-p.ctx.Done():
		return verdict{closed: true}
	}
}

// finish closes a connection once and tells the loop.
func (p *Proxy) finish(c *proxyConn, reason string) {
	if !p.drop(c, reason) {
		return
	}
	if p.ctx.Err() == nil {
		p.push(&Event{Kind: Closed, ID: c.id, Reason: reason})
	}
}

// drop closes a connection's sockets and forgets it, once.
func (p *Proxy) drop(c *proxyConn, reason string) bool {
	if !c.reason.CompareAndSwap(nil, &reason) {
		return false
	}
	c.client.Close()
	c.server.Close()
	p.mu.Lock()
	delete(p.conns, c.id)
	p.bySource.Remove(c.source)
	p.mu.Unlock()
	return true
}

// CloseConn closes a proxied connection whose session the handler ended
// (a timeout); it tells the loop nothing more.
func (p *Proxy) CloseConn(id uint64) {
	p.mu.Lock()
	c := p.conns[id]
	p.mu.Unlock()
	if c != nil {
		p.drop(c, "ended by ftpgate")
	}
}

func (p *Proxy) push(ev *Event) {
	ev.Time = time.Now()
	p.events.Push(ev)
}

// Fd becomes readable when the proxy has something for the loop.
func (p *Proxy) Fd() int { return p.events.Fd() }

// Read hands over what happened since the last Read, on the loop's
// goroutine: connections opened, bytes read (each waits for Release),
// sides and connections closed.
func (p *Proxy) Read(fn func(*Event)) {
	for _, ev := range p.events.Take() {
		if ev.Kind == Bytes {
			p.delivered = append(p.delivered, ev)
		}
		fn(ev)
	}
}

// Release sends on what the handler said for every chunk of the last
// Read.
func (p *Proxy) Release() {
	for _, ev := range p.delivered {
		ev.verdict <- verdict{out: ev.Out, through: ev.Through, closed: ev.Close}
	}
	clear(p.delivered)
	p.delivered = p.delivered[:0]
}

// SharesProcessor: the relays of live connections must run while the
// loop waits (see capture.Sharer).
func (p *Proxy) SharesProcessor() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns) > 0
}

// Counts returns how many connections were proxied, and how many were
// closed because the proxy was full.
func (p *Proxy) Counts() (accepted, refused uint64) { return p.accepted.Load(), p.refused.Load() }

// Open is how many connections the proxy holds now, those still
// connecting included.
func (p *Proxy) Open() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns) + p.connecting
}

// Close stops listening and closes every proxied connection: their
// sessions end with ftpgate.
func (p *Proxy) Close() error {
	p.cancel()
	for _, ln := range p.listeners {
		ln.Close()
	}
	p.mu.Lock()
	p.closed = true
	conns := make([]*proxyConn, 0, len(p.conns))
	for _, c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		c.client.Close()
		c.server.Close()
	}
	p.wg.Wait()
	if p.ct != nil {
		p.ct.Close()
	}
	return p.events.Close()
}
