package capture

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	vnl "github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// LocalSockets answers, from the kernel, what ftpgate must know of this
// host's own sockets: whether an address is this host's, who owns the
// socket of a connection, and who owns the listening socket a connection
// would reach (sock_diag exact lookups, as `ss` makes them). Each answer
// is one netlink request; ftpgate asks only for announcements made from
// this host.
type LocalSockets struct {
	conn *netlink.Conn
	// The host's addresses, read again when older than addrsFor.
	mu     sync.Mutex
	addrs  map[netip.Addr]bool
	readAt time.Time
	// Every listening socket, read again when older than listenersFor.
	listeners  map[netip.AddrPort]bool
	listenedAt time.Time
	now        func() time.Time
}

// addrsFor is how long the host's address list is trusted: an address
// added since is seen at most that much later.
const addrsFor = 2 * time.Second

// OpenLocalSockets opens the sock_diag socket.
func OpenLocalSockets() (*LocalSockets, error) {
	c, err := netlink.Dial(unix.NETLINK_SOCK_DIAG, nil)
	if err != nil {
		return nil, fmt.Errorf("opening a sock_diag socket (to check announcements of this host's own sockets): %w", err)
	}
	return &LocalSockets{conn: c, now: time.Now}, nil
}

// Close closes the socket.
func (l *LocalSockets) Close() error { return l.conn.Close() }

// IsLocal reports whether a is an address of this host.
func (l *LocalSockets) IsLocal(a netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.addrs == nil || l.now().Sub(l.readAt) > addrsFor {
		addrs, err := vnl.AddrList(nil, vnl.FAMILY_ALL)
		if err == nil {
			l.addrs = map[netip.Addr]bool{}
			for _, x := range addrs {
				if a, ok := netip.AddrFromSlice(x.IP); ok {
					l.addrs[a.Unmap()] = true
				}
			}
			l.readAt = l.now()
		}
	}
	return l.addrs[a.Unmap()] || a.IsLoopback()
}

// Owner returns the user owning this host's socket of the connection
// local <-> remote, while a process still has it open: a socket its owner
// closed (FIN_WAIT, TIME_WAIT: the kernel reports those as root's, and
// with no inode) is no socket of anyone's.
func (l *LocalSockets) Owner(local, remote netip.AddrPort) (uint32, bool) {
	d, err := l.lookup(local, remote)
	open := d.state == unix.BPF_TCP_ESTABLISHED || d.state == unix.BPF_TCP_CLOSE_WAIT
	return d.uid, err == nil && open && d.inode != 0
}

// Listener returns the user owning the listening socket that a
// connection from remote to local would reach.
func (l *LocalSockets) Listener(local, remote netip.AddrPort) (uint32, bool) {
	d, err := l.lookup(local, remote)
	return d.uid, err == nil && d.state == unix.BPF_TCP_LISTEN && d.inode != 0
}

// listenersFor is how long the list of listening sockets is trusted (see
// Listening).
const listenersFor = time.Second

// Listening reports whether this host has a listening TCP socket that a
// connection to ap would reach (bound to its address, or to any). It
// answers from a list of every listening socket read at most a second
// ago, so that NAT can check many ports for the price of one dump.
func (l *LocalSockets) Listening(ap netip.AddrPort) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.listeners == nil || l.now().Sub(l.listenedAt) > listenersFor {
		if m, err := l.dumpListeners(); err == nil {
			l.listeners, l.listenedAt = m, l.now()
		}
	}
	a := ap.Addr().Unmap()
	any4, any6 := netip.AddrPortFrom(netip.IPv4Unspecified(), ap.Port()), netip.AddrPortFrom(netip.IPv6Unspecified(), ap.Port())
	return l.listeners[netip.AddrPortFrom(a, ap.Port())] || l.listeners[any6] || (a.Is4() && l.listeners[any4])
}

// dumpListeners reads every listening TCP socket, IPv4 and IPv6.
func (l *LocalSockets) dumpListeners() (map[netip.AddrPort]bool, error) {
	m := map[netip.AddrPort]bool{}
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		req := make([]byte, 56)
		req[0], req[1] = family, unix.IPPROTO_TCP
		binary.NativeEndian.PutUint32(req[4:], 1<<unix.BPF_TCP_LISTEN)
		msgs, err := l.conn.Execute(netlink.Message{
			Header: netlink.Header{Type: netlink.HeaderType(nl.SOCK_DIAG_BY_FAMILY), Flags: netlink.Request | netlink.Dump},
			Data:   req,
		})
		if err != nil {
			return nil, fmt.Errorf("listing listening sockets: %w", err)
		}
		for _, msg := range msgs {
			if len(msg.Data) < 72 {
				continue
			}
			port := binary.BigEndian.Uint16(msg.Data[4:])
			var a netip.Addr
			if msg.Data[0] == unix.AF_INET {
				a = netip.AddrFrom4([4]byte(msg.Data[8:12]))
			} else {
				a = netip.AddrFrom16([16]byte(msg.Data[8:24])).Unmap()
			}
			m[netip.AddrPortFrom(a, port)] = true
		}
	}
	return m, nil
}

// errNoSocket: the kernel has no socket for the lookup.
var errNoSocket = errors.New("no such socket")

// diagMsg is what ftpgate reads of an inet_diag_msg.
type diagMsg struct {
	state      uint8
	uid, inode uint32
}

// lookup is SOCK_DIAG_BY_FAMILY without NLM_F_DUMP: the kernel looks the
// socket up as an arriving segment would (established, else listening)
// and returns its inet_diag_msg.
func (l *LocalSockets) lookup(local, remote netip.AddrPort) (diagMsg, error) {
	family := uint8(unix.AF_INET)
	if local.Addr().Is6() && !local.Addr().Is4In6() {
		family = unix.AF_INET6
	}
	req := make([]byte, 56) // inet_diag_req_v2
	req[0], req[1] = family, unix.IPPROTO_TCP
	binary.NativeEndian.PutUint32(req[4:], 0xffffffff) // every state
	id := req[8:]
	binary.BigEndian.PutUint16(id[0:], local.Port())
	binary.BigEndian.PutUint16(id[2:], remote.Port())
	putAddr(id[4:20], local.Addr(), family)
	putAddr(id[20:36], remote.Addr(), family)
	binary.NativeEndian.PutUint32(id[40:], nl.TCPDIAG_NOCOOKIE)
	binary.NativeEndian.PutUint32(id[44:], nl.TCPDIAG_NOCOOKIE)
	msgs, err := l.conn.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(nl.SOCK_DIAG_BY_FAMILY), Flags: netlink.Request},
		Data:   req,
	})
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return diagMsg{}, errNoSocket
		}
		return diagMsg{}, fmt.Errorf("looking up the socket %s <-> %s: %w", local, remote, err)
	}
	for _, m := range msgs {
		if len(m.Data) >= 72 { // inet_diag_msg
			return diagMsg{state: m.Data[1], uid: binary.NativeEndian.Uint32(m.Data[64:]), inode: binary.NativeEndian.Uint32(m.Data[68:])}, nil
		}
	}
	return diagMsg{}, errNoSocket
}

func putAddr(b []byte, a netip.Addr, family uint8) {
	if family == unix.AF_INET {
		v := a.Unmap().As4()
		copy(b, v[:])
		return
	}
	v := a.As16()
	copy(b, v[:])
}
