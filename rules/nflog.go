package rules

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// From linux/netfilter/nfnetlink_log.h; golang.org/x/sys lacks them.
const (
	nfulnlMsgPacket    = 0
	nfulnlMsgConfig    = 1
	nfulaPayload       = 9
	nfulaPrefix        = 10
	nfulaCfgCmd        = 1
	nfulaCfgMode       = 2
	nfulaCfgNlBufSiz   = 3
	nfulaCfgTimeout    = 4
	nfulaCfgQThresh    = 5
	nfulnlCfgCmdBind   = 1
	nfulnlCfgCmdUnbind = 2
	nfulnlCopyPacket   = 2
	consumedSnaplen    = 128 // IPv6 header + TCP ports fit with room to spare
)

// DefaultLogGroup is the NFLOG group on which ftpgate's rules send the
// daemon what it watches: copies of FTP control segments (inline capture)
// and the first packet of each data connection that used a pinhole.
const DefaultLogGroup = 2121

// LogPrefixUsed is the log prefix of the reports of used pinholes; control
// segments are copied without a prefix.
const LogPrefixUsed = "ftpgate: pinhole used"

// LogPrefixFlush marks the record a held data SYN leaves on its way to
// the queue. It carries nothing; logging it with a queue threshold of one
// makes the kernel deliver every copy it had batched (see
// AddInlineRules), and the daemon skips it.
const LogPrefixFlush = "ftpgate: flush"

// LogRecord is one packet the kernel logged to the group. Both slices
// point into the reader's buffer and are valid until the next Drain.
type LogRecord struct {
	Prefix  []byte // the rule's log prefix, without the trailing NUL
	Payload []byte // the packet from its network header
}

// LogReader reads one NFLOG group. Reads never block, so a caller can
// drain everything the kernel logged before it decides on a held packet:
// the kernel writes each record before the logged packet goes on, so the
// records of every packet that came earlier are already waiting.
type LogReader struct {
	conn  *netlink.Conn
	raw   syscall.RawConn
	fd    int
	group uint16
	buf   []byte
	// closed is set before the socket closes, so that Drain, which
	// reads the descriptor directly, never reads a reused one.
	closed atomic.Bool
	// Lost counts the times the socket overflowed and records were lost.
	Lost uint64
	// Datagrams and Records count what Drain read: with batching
	// (SetBatch) one datagram carries several records.
	Datagrams, Records uint64
}

// OpenLog binds the NFLOG group in the given network namespace (0: the
// current one), copying whole packets and delivering each record at once.
// Only one process per namespace can bind a group.
func OpenLog(group uint16, netns int) (*LogReader, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netns})
	if err != nil {
		return nil, fmt.Errorf("%w: opening nflog socket: %v", ErrNoNftables, err)
	}
	l := &LogReader{conn: conn, group: group, buf: make([]byte, 1<<17)}
	fail := func(err error) (*LogReader, error) {
		conn.Close()
		return nil, err
	}
	if l.raw, err = conn.SyscallConn(); err != nil {
		return fail(fmt.Errorf("nflog socket: %w", err))
	}
	_ = l.raw.Control(func(fd uintptr) {
		l.fd = int(fd)
		// Bursts of control traffic must not overflow the socket while
		// the daemon commits; FORCE passes net.core.rmem_max (root only).
		if unix.SetsockoptInt(l.fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20) != nil {
			_ = unix.SetsockoptInt(l.fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
		}
	})
	if err := l.config([]netlink.Attribute{{Type: nfulaCfgCmd, Data: []byte{nfulnlCfgCmdBind}}}); err != nil {
		return fail(fmt.Errorf("binding NFLOG group %d (is it used by another program? see --nflog-group): %w", group, err))
	}
	mode := make([]byte, 6)
	binary.BigEndian.PutUint32(mode, 0xffff)
	mode[4] = nfulnlCopyPacket
	qthresh := binary.BigEndian.AppendUint32(nil, 1) // deliver each packet at once, not in batches
	if err := l.config([]netlink.Attribute{{Type: nfulaCfgMode, Data: mode}, {Type: nfulaCfgQThresh, Data: qthresh}}); err != nil {
		return fail(fmt.Errorf("configuring NFLOG group %d: %w", group, err))
	}
	return l, nil
}

// SetBatch lets the kernel gather up to records log records (and at most
// bufBytes of them) before it delivers them in one datagram, or after
// wait if fewer come. One wakeup of the daemon then reads many copies
// instead of one. A rule whose log statement has a lower queue-threshold
// still has its record, and every record batched before it, delivered at
// once. records 1 turns batching off. The kernel counts wait in
// hundredths of a second; 0 means its next timer tick (4 ms at HZ=250).
//
// The equivalent of libnetfilter_log's nflog_set_qthresh,
// nflog_set_timeout and nflog_set_nlbufsiz.
func (l *LogReader) SetBatch(records, bufBytes uint32, wait time.Duration) error {
	if records == 0 {
		records = 1
	}
	// The kernel refuses a buffer smaller than its default (one page)
	// or larger than 128 KiB, and the reader must hold a whole datagram.
	bufBytes = min(max(bufBytes, 4096), 1<<17, uint32(len(l.buf)))
	attrs := []netlink.Attribute{
		{Type: nfulaCfgQThresh, Data: binary.BigEndian.AppendUint32(nil, records)},
		{Type: nfulaCfgTimeout, Data: binary.BigEndian.AppendUint32(nil, uint32(wait/(10*time.Millisecond)))},
		{Type: nfulaCfgNlBufSiz, Data: binary.BigEndian.AppendUint32(nil, bufBytes)},
	}
	if err := l.config(attrs); err != nil {
		return fmt.Errorf("setting NFLOG group %d to deliver %d records at once: %w", l.group, records, err)
	}
	return nil
}

func (l *LogReader) config(attrs []netlink.Attribute) error {
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return err
	}
	hdr := []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, byte(l.group >> 8), byte(l.group)}
	_, err = l.conn.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_ULOG<<8 | nfulnlMsgConfig),
			Flags: netlink.Request | netlink.Acknowledge,
		},
		Data: append(hdr, data...),
	})
	return err
}

// Fd is the socket to poll for records.
func (l *LogReader) Fd() int { return l.fd }

// Wait blocks until a record is waiting, the reader is closed or ctx ends.
// It consumes nothing. Only one goroutine may wait at a time.
func (l *LogReader) Wait(ctx context.Context) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	stop := context.AfterFunc(ctx, func() { l.closed.Store(true); l.conn.Close() })
	defer stop()
	var one [1]byte
	var rerr error
	err := l.raw.Read(func(fd uintptr) bool {
		_, rerr = RecvNonblocking(int(fd), one[:], unix.MSG_PEEK)
		return !errors.Is(rerr, unix.EAGAIN) && !errors.Is(rerr, unix.EINTR)
	})
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("waiting for NFLOG group %d: %w", l.group, err)
	}
	if rerr != nil && !errors.Is(rerr, unix.ENOBUFS) {
		return fmt.Errorf("reading NFLOG group %d: %w", l.group, rerr)
	}
	return nil
}

// Drain hands every record already waiting to fn, without blocking, and
// returns how many there were. It may run while another goroutine Waits.
// An overflow of the socket is counted in Lost and is not an error.
func (l *LogReader) Drain(fn func(LogRecord)) (int, error) {
	count := 0
	for !l.closed.Load() {
		n, err := RecvNonblocking(l.fd, l.buf, 0)
		switch {
		case errors.Is(err, unix.EAGAIN):
			return count, nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ENOBUFS):
			l.Lost++
			continue
		case err != nil:
			return count, fmt.Errorf("reading NFLOG group %d: %w", l.group, err)
		}
		r := parseLogMessages(l.buf[:n], fn)
		count += r
		l.Datagrams++
		l.Records += uint64(r)
	}
	return count, nil
}

// RecvNonblocking reads one datagram without blocking. It is a raw
// system call: the Go scheduler need not hear of a call that cannot
// block, and telling it (entersyscall) wakes its monitor thread, which
// measurably cost more CPU than the read itself at one read per packet.
func RecvNonblocking(fd int, b []byte, flags int) (int, error) {
	if len(b) == 0 {
		return 0, unix.EINVAL
	}
	n, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
		uintptr(flags|unix.MSG_DONTWAIT), 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// parseLogMessages walks the netlink messages of one datagram and hands
// each logged packet to fn. Malformed parts are skipped.
func parseLogMessages(b []byte, fn func(LogRecord)) int {
	count := 0
	NetlinkMessages(b, func(typ uint16, data []byte) {
		if typ != unix.NFNL_SUBSYS_ULOG<<8|nfulnlMsgPacket || len(data) < 4 {
			return
		}
		var r LogRecord
		NetlinkAttrs(data[4:], func(typ uint16, v []byte) {
			switch typ {
			case nfulaPayload:
				r.Payload = v
			case nfulaPrefix:
				r.Prefix = bytes.TrimRight(v, "\x00")
			}
		})
		if r.Payload != nil {
			fn(r)
			count++
		}
	})
	return count
}

// NetlinkMessages hands each message of a netlink datagram (type, and the
// data after the header) to fn, and stops at the first malformed one.
func NetlinkMessages(b []byte, fn func(typ uint16, data []byte)) {
	for len(b) >= unix.NLMSG_HDRLEN {
		mlen := int(binary.NativeEndian.Uint32(b))
		if mlen < unix.NLMSG_HDRLEN || mlen > len(b) {
			return
		}
		fn(binary.NativeEndian.Uint16(b[4:]), b[unix.NLMSG_HDRLEN:mlen])
		next := (mlen + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
		if next >= len(b) {
			return
		}
		b = b[next:]
	}
}

// NetlinkAttrs hands each attribute (type without the nested and byte
// order flags, and value) to fn, and stops at the first malformed one.
func NetlinkAttrs(b []byte, fn func(typ uint16, v []byte)) {
	for len(b) >= 4 {
		alen := int(binary.NativeEndian.Uint16(b))
		if alen < 4 || alen > len(b) {
			return
		}
		fn(binary.NativeEndian.Uint16(b[2:])&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER), b[4:alen])
		next := (alen + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
		if next >= len(b) {
			return
		}
		b = b[next:]
	}
}

// PinholeOfPacket reads the pinhole key a TCP SYN matches (source,
// destination, destination port) from its IP header.
func PinholeOfPacket(b []byte) (Pinhole, bool) {
	if len(b) < 1 {
		return Pinhole{}, false
	}
	switch b[0] >> 4 {
	case 4:
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 || len(b) < ihl+4 || b[9] != unix.IPPROTO_TCP {
			return Pinhole{}, false
		}
		return Pinhole{
			Peer: netip.AddrFrom4([4]byte(b[12:16])),
			Addr: netip.AddrFrom4([4]byte(b[16:20])),
			Port: binary.BigEndian.Uint16(b[ihl+2:]),
		}, true
	case 6:
		if len(b) < 44 || b[6] != unix.IPPROTO_TCP {
			return Pinhole{}, false
		}
		return Pinhole{
			Peer: netip.AddrFrom16([16]byte(b[8:24])),
			Addr: netip.AddrFrom16([16]byte(b[24:40])),
			Port: binary.BigEndian.Uint16(b[42:]),
		}, true
	}
	return Pinhole{}, false
}

// Close unbinds the group and closes the socket.
func (l *LogReader) Close() error {
	if !l.closed.Swap(true) {
		_ = l.config([]netlink.Attribute{{Type: nfulaCfgCmd, Data: []byte{nfulnlCfgCmdUnbind}}})
	}
	_ = l.conn.Close() // Wait may have closed it already
	return nil
}
