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
	now    func() time.Time
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
// local <-> remote.
func (l *LocalSockets) Owner(local, remote netip.AddrPort) (uint32, bool) {
	uid, _, err := l.lookup(local, remote)
	return uid, err == nil
}

// Listener returns the user owning the listening socket that a
// connection from remote to local would reach.
func (l *LocalSockets) Listener(local, remote netip.AddrPort) (uint32, bool) {
	uid, state, err := l.lookup(local, remote)
	return uid, err == nil && state == unix.BPF_TCP_LISTEN
}

// errNoSocket: the kernel has no socket for the lookup.
var errNoSocket = errors.New("no such socket")

// lookup is SOCK_DIAG_BY_FAMILY without NLM_F_DUMP: the kernel looks the
// socket up as an arriving segment would (established, else listening)
// and returns its inet_diag_msg.
func (l *LocalSockets) lookup(local, remote netip.AddrPort) (uid uint32, state uint8, err error) {
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
			return 0, 0, errNoSocket
		}
		return 0, 0, fmt.Errorf("looking up the socket %s <-> %s: %w", local, remote, err)
	}
	for _, m := range msgs {
		if len(m.Data) >= 72 { // inet_diag_msg
			return binary.NativeEndian.Uint32(m.Data[64:]), m.Data[1], nil
		}
	}
	return 0, 0, errNoSocket
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
