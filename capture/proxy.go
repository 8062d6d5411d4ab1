package capture

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// ProxiedConn is one control connection through the control proxy, with
// both of its translations: what each end is, and what each end sees of
// the other.
type ProxiedConn struct {
	ID uint64
	// Client and Server are the two ends as they are: the client's own
	// address, and the server's after the admin's destination NAT.
	Client, Server netip.AddrPort
	// ServerSeen is the server as the client addressed it (before
	// destination NAT); ClientSeen is the client as the server sees it
	// (after source NAT; the port is the proxy's connection's).
	ServerSeen, ClientSeen netip.AddrPort
}

// ProxyConfig says how the control proxy runs.
type ProxyConfig struct {
	// Port on 127.0.0.1 and ::1 that ftpgate's tproxy rules send
	// translated control connections to.
	Port uint16
	// SocketMark is set on every socket of the proxy (SO_MARK), so that
	// ftpgate's chains know their packets.
	SocketMark uint32
	// MaxConns bounds the connections proxied at once; more are closed
	// at once.
	MaxConns int
	// ConnectTimeout bounds the connection to the server.
	ConnectTimeout time.Duration
	// MaxLine is the longest line handed over; a longer one is handed
	// over in pieces of MaxLine.
	MaxLine int
	// RawPorts are server ports whose connections are relayed unread
	// from the first byte (implicit FTPS).
	RawPorts []uint16
	Log      *slog.Logger
}

// Proxy is the control proxy: it terminates translated control
// connections, connects to their servers from the client's own address
// (IP_TRANSPARENT), and hands every line of either direction to the loop
// as a Held packet of kind Line, sending on what the handler puts in Out
// once the packet is released, after the loop's Tick has committed what
// the line made ftpgate open. A connection that opens, and one that
// ends, are packets of kind Opened and Closed.
type Proxy struct {
	cfg       ProxyConfig
	listeners []net.Listener
	ct        *netlink.Conn
	events    *handoff[*proxyEvent] // to the loop
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup

	mu        sync.Mutex
	delivered []*proxyEvent
	conns     map[uint64]*proxyConn
	nextID    uint64
	accepted  atomic.Uint64
	refused   atomic.Uint64
}

// proxyEvent is one thing the proxy hands to the loop.
type proxyEvent struct {
	pkt     Packet
	verdict chan proxyVerdict // Line only
}

type proxyVerdict struct {
	out    []byte
	raw    bool
	closed bool
}

type proxyConn struct {
	info   ProxiedConn
	client *net.TCPConn
	server *net.TCPConn
	raw    atomic.Bool // relay bytes, no longer lines (TLS)
	// holding, per direction (0 client, 1 server): the handler is
	// holding lines back (a multi-line reply); every line waits.
	holding [2]bool
	ended   atomic.Int32
	reason  atomic.Pointer[string]
}

// OpenProxy starts listening. It fails if the port is taken or the
// process may not use IP_TRANSPARENT (CAP_NET_ADMIN).
func OpenProxy(cfg ProxyConfig) (*Proxy, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxLine <= 0 {
		cfg.MaxLine = 4096
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 10000
	}
	events, err := newHandoff[*proxyEvent]()
	if err != nil {
		return nil, err
	}
	ct, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		events.Close()
		return nil, fmt.Errorf("opening a ctnetlink socket (to learn source NAT): %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{cfg: cfg, ct: ct, events: events, ctx: ctx, cancel: cancel, conns: map[uint64]*proxyConn{}}
	lc := net.ListenConfig{Control: p.control}
	for _, addr := range []string{"127.0.0.1", "::1"} {
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
	p.mu.Lock()
	full := len(p.conns) >= p.cfg.MaxConns
	p.mu.Unlock()
	if full {
		p.refused.Add(1)
		p.cfg.Log.Warn("control proxy full: connection closed", "client", peer.String(), "server", local.String(), "max", p.cfg.MaxConns)
		client.Close()
		return
	}
	seen := local
	if od, err := originalDst(client); err == nil {
		seen = od
	}
	server, err := p.dial(peer.Addr(), local)
	if err != nil {
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
	p.mu.Lock()
	p.nextID++
	c := &proxyConn{
		info:   ProxiedConn{ID: p.nextID, Client: peer, Server: local, ServerSeen: seen, ClientSeen: clientSeen},
		client: client, server: server,
	}
	p.conns[c.info.ID] = c
	p.mu.Unlock()
	p.accepted.Add(1)
	if slices.Contains(p.cfg.RawPorts, local.Port()) {
		c.raw.Store(true)
	}
	p.push(&proxyEvent{pkt: Packet{Kind: Opened, Conn: &c.info}})
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

// relay carries one direction, line by line until the connection turns
// raw.
func (p *Proxy) relay(c *proxyConn, fromServer bool) {
	defer p.wg.Done()
	src, dst := c.client, c.server
	if fromServer {
		src, dst = c.server, c.client
	}
	// Control lines are short: the buffer starts small and grows to
	// MaxLine only for a long one, so that an idle session costs little.
	buf := make([]byte, 0, 256)
	why := "closed by the client"
	if fromServer {
		why = "closed by the server"
	}
	for {
		if c.raw.Load() {
			if len(buf) > 0 {
				if _, err := dst.Write(buf); err != nil {
					why = "write failed: " + err.Error()
					break
				}
			}
			if _, err := io.Copy(dst, src); err != nil {
				why = "relay failed: " + err.Error()
			}
			break
		}
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, min(2*cap(buf), p.cfg.MaxLine)-len(buf))
		}
		n, err := src.Read(buf[len(buf):min(cap(buf), p.cfg.MaxLine)])
		buf = buf[:len(buf)+n]
		for !c.raw.Load() {
			end := indexNewline(buf)
			if end < 0 && len(buf) < p.cfg.MaxLine {
				break
			}
			if end < 0 {
				end = len(buf)
			}
			d := 0
			if fromServer {
				d = 1
			}
			if !c.holding[d] && !mayChange(buf[:end], fromServer) {
				// Handed over for the record, sent on at once: only
				// announcements and the start of TLS wait for the loop.
				p.push(&proxyEvent{pkt: Packet{Kind: Line, Conn: &c.info, FromServer: fromServer, Forwarded: true,
					Data: append([]byte(nil), buf[:end]...)}})
				if _, werr := dst.Write(buf[:end]); werr != nil {
					p.finish(c, "write failed: "+werr.Error())
					return
				}
				buf = append(buf[:0], buf[end:]...)
				continue
			}
			v := p.submit(c, fromServer, buf[:end])
			c.holding[d] = v.out != nil && len(v.out) == 0
			if v.closed {
				p.finish(c, "ftpgate is stopping")
				return
			}
			if v.raw {
				c.raw.Store(true)
			}
			if _, werr := dst.Write(v.out); werr != nil {
				p.finish(c, "write failed: "+werr.Error())
				return
			}
			buf = append(buf[:0], buf[end:]...)
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				why = "read failed: " + err.Error()
			}
			if len(buf) > 0 {
				_, _ = dst.Write(buf) // an unfinished last line goes on as it is
			}
			break
		}
	}
	_ = dst.CloseWrite()
	if c.ended.Add(1) == 2 {
		p.finish(c, why)
	}
}

// mayChange reports whether what the proxy sends on for a line may
// differ from the line, or change how the connection is relayed: an
// active-mode command, a reply that announces an address, a 234 (TLS
// begins). Every other line goes on at once.
func mayChange(line []byte, fromServer bool) bool {
	if fromServer {
		return len(line) >= 3 && line[0] == '2' && (string(line[1:3]) == "27" || string(line[1:3]) == "28" ||
			string(line[1:3]) == "29" || string(line[1:3]) == "34")
	}
	for len(line) > 0 && line[0] == ' ' {
		line = line[1:]
	}
	if len(line) < 4 {
		return false
	}
	switch v := string(bytes.ToUpper(line[:4])); v {
	case "PORT", "EPRT", "LPRT":
		return true
	}
	return false
}

func indexNewline(b []byte) int {
	for i, x := range b {
		if x == '\n' {
			return i + 1
		}
	}
	return -1
}

// submit hands a line to the loop and waits for what to send on.
func (p *Proxy) submit(c *proxyConn, fromServer bool, line []byte) proxyVerdict {
	ev := &proxyEvent{
		pkt:     Packet{Kind: Line, Conn: &c.info, FromServer: fromServer, Data: append([]byte(nil), line...)},
		verdict: make(chan proxyVerdict, 1),
	}
	p.push(ev)
	select {
	case v := <-ev.verdict:
		return v
	case <-p.ctx.Done():
		return proxyVerdict{closed: true}
	}
}

// finish closes a connection once and tells the loop.
func (p *Proxy) finish(c *proxyConn, reason string) {
	if !c.reason.CompareAndSwap(nil, &reason) {
		return
	}
	c.client.Close()
	c.server.Close()
	p.mu.Lock()
	delete(p.conns, c.info.ID)
	p.mu.Unlock()
	if p.ctx.Err() == nil {
		p.push(&proxyEvent{pkt: Packet{Kind: Closed, Conn: &c.info, Data: []byte(reason)}})
	}
}

func (p *Proxy) push(ev *proxyEvent) {
	ev.pkt.Time = time.Now()
	p.events.Push(ev)
}

// Fd becomes readable when the proxy has something for the loop.
func (p *Proxy) Fd() int { return p.events.Fd() }

// Read hands over what happened since the last Read: connections opened,
// lines read (Held: each waits for Release), connections closed.
func (p *Proxy) Read(fn func(*Packet)) error {
	for _, ev := range p.events.Take() {
		if ev.pkt.Kind == Line {
			p.delivered = append(p.delivered, ev)
		}
		fn(&ev.pkt)
	}
	return nil
}

// Release sends on every line of the last Read: Out if the handler set
// it, else the line as it was read.
func (p *Proxy) Release() error {
	for _, ev := range p.delivered {
		if ev.verdict == nil {
			continue // Forwarded already
		}
		out := ev.pkt.Out
		if out == nil {
			out = ev.pkt.Data
		}
		ev.verdict <- proxyVerdict{out: out, raw: ev.pkt.Raw}
	}
	clear(p.delivered)
	p.delivered = p.delivered[:0]
	return nil
}

// sharesProcessor: the relays of live connections must run while the
// loop waits.
func (p *Proxy) sharesProcessor() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns) > 0
}

// Counts returns how many connections were proxied, and how many were
// closed because the proxy was full.
func (p *Proxy) Counts() (accepted, refused uint64) { return p.accepted.Load(), p.refused.Load() }

// Close stops listening and closes every proxied connection: their
// sessions end with ftpgate.
func (p *Proxy) Close() error {
	p.cancel()
	for _, ln := range p.listeners {
		ln.Close()
	}
	p.mu.Lock()
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
	p.ct.Close()
	return p.events.Close()
}
