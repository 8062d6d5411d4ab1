package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/gopacket/gopacket"

	"github.com/ftpgate/ftpgate/rules"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// From linux/netfilter/nfnetlink_queue.h and nfnetlink_conntrack.h.
const (
	nfqnlMsgPacket  = 0
	nfqnlMsgVerdict = 1
	nfqnlMsgConfig  = 2
	nfqnlMsgBatch   = 3 // NFQNL_MSG_VERDICT_BATCH: every id up to the given one

	nfqaPacketHdr  = 1
	nfqaVerdictHdr = 2
	nfqaMark       = 3
	nfqaTimestamp  = 4
	nfqaPayload    = 10

	nfqaCfgCmd         = 1
	nfqaCfgParams      = 2
	nfqaCfgQueueMaxlen = 3
	nfqaCfgMask        = 4
	nfqaCfgFlags       = 5

	nfqnlCfgCmdBind   = 1
	nfqnlCfgCmdUnbind = 2
	nfqnlCopyPacket   = 2
	nfqaCfgFFailOpen  = 1

	nfAccept = 1
	nfRepeat = 4
)

// QueueSource is the held half of inline capture (see
// rules.AddInlineRules): the kernel queues the SYN of each new control
// connection and each data SYN that beat its pinhole, and holds them
// until ftpgate has caught up with the copies of the control traffic.
// Nothing is dropped here: a packet is accepted, or, if ftpgate admits
// it, sent through ftpgate's chain again with the mark that its first rule
// turns into the data connection's conntrack mark.
type QueueSource struct {
	conn   *netlink.Conn
	raw    syscall.RawConn
	fd     int
	closed atomic.Bool
	num    uint16
	log    *slog.Logger
	buf    []byte
	out    []byte
	// Mark, within MarkMask, is set in the packet mark of each packet
	// handle admits, which then goes through ftpgate's chain again
	// (NF_REPEAT), where rules.AddInlineRules' first rule moves it to the
	// conntrack mark: how a held data SYN whose pinhole is open passes
	// the admin's rules, like one that met its pinhole in the kernel.
	Mark, MarkMask uint32
}

// OpenQueue binds queue num in the given network namespace (0: current).
// The queue fails open when full, so control traffic never stalls.
func OpenQueue(num uint16, maxLen uint32, netns int, log *slog.Logger) (*QueueSource, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netns})
	if err != nil {
		return nil, fmt.Errorf("opening nfqueue socket: %w", err)
	}
	q := &QueueSource{conn: conn, num: num, log: log, buf: make([]byte, 1<<17)}
	if q.raw, err = conn.SyscallConn(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("nfqueue socket: %w", err)
	}
	_ = q.raw.Control(func(fd uintptr) {
		q.fd = int(fd)
		if unix.SetsockoptInt(q.fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20) != nil {
			_ = unix.SetsockoptInt(q.fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
		}
		// Errors of verdicts for packets that left the queue meanwhile
		// are of no use; the reader would only have to skip them.
		_ = unix.SetsockoptInt(q.fd, unix.SOL_NETLINK, unix.NETLINK_NO_ENOBUFS, 1)
	})
	cmd := []byte{nfqnlCfgCmdBind, 0, 0, 0} // command, pad, pf (unused since Linux 3.8)
	params := binary.BigEndian.AppendUint32(nil, 0xffff)
	params = append(params, nfqnlCopyPacket)
	flags := binary.BigEndian.AppendUint32(nil, nfqaCfgFFailOpen)
	for _, attrs := range [][]netlink.Attribute{
		{{Type: nfqaCfgCmd, Data: cmd}},
		{
			{Type: nfqaCfgParams, Data: params},
			{Type: nfqaCfgQueueMaxlen, Data: binary.BigEndian.AppendUint32(nil, maxLen)},
			{Type: nfqaCfgMask, Data: flags},
			{Type: nfqaCfgFlags, Data: flags},
		},
	} {
		if err := q.config(attrs); err != nil {
			conn.Close()
			return nil, fmt.Errorf("binding NFQUEUE %d (used by another program? see --queue): %w", num, err)
		}
	}
	return q, nil
}

func (q *QueueSource) header() []byte {
	return []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, byte(q.num >> 8), byte(q.num)}
}

func (q *QueueSource) config(attrs []netlink.Attribute) error {
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return err
	}
	_, err = q.conn.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_QUEUE<<8 | nfqnlMsgConfig),
			Flags: netlink.Request | netlink.Acknowledge,
		},
		Data: append(q.header(), data...),
	})
	return err
}

// appendVerdict appends one verdict message for id (accept, or repeat
// with the packet mark set to mark), or a batch accept of every id up to
// id.
func (q *QueueSource) appendVerdict(b []byte, batch bool, id uint32, repeat bool, mark uint32) []byte {
	typ := uint16(unix.NFNL_SUBSYS_QUEUE<<8 | nfqnlMsgVerdict)
	if batch {
		typ = unix.NFNL_SUBSYS_QUEUE<<8 | nfqnlMsgBatch
	}
	start := len(b)
	b = binary.NativeEndian.AppendUint32(b, 0) // length, set below
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = binary.NativeEndian.AppendUint16(b, unix.NLM_F_REQUEST)
	b = binary.NativeEndian.AppendUint32(b, 0) // sequence
	b = binary.NativeEndian.AppendUint32(b, 0) // port id: the kernel's
	b = append(b, q.header()...)
	attr := func(b []byte, typ uint16, n int) []byte {
		b = binary.NativeEndian.AppendUint16(b, uint16(4+n))
		return binary.NativeEndian.AppendUint16(b, typ)
	}
	b = attr(b, nfqaVerdictHdr, 8)
	if repeat {
		b = binary.BigEndian.AppendUint32(b, nfRepeat)
	} else {
		b = binary.BigEndian.AppendUint32(b, nfAccept)
	}
	b = binary.BigEndian.AppendUint32(b, id)
	if repeat {
		b = attr(b, nfqaMark, 4)
		b = binary.BigEndian.AppendUint32(b, mark)
	}
	binary.NativeEndian.PutUint32(b[start:], uint32(len(b)-start))
	return b
}

// decodeQueued reads a packet message: the packet, its queue id and its
// packet mark.
func decodeQueued(attrs []byte) (Packet, uint32, uint32, bool) {
	var id, mark uint32
	var haveID bool
	var payload []byte
	var ts time.Time
	rules.NetlinkAttrs(attrs, func(typ uint16, v []byte) {
		switch typ {
		case nfqaPacketHdr:
			if len(v) >= 4 {
				id, haveID = binary.BigEndian.Uint32(v), true
			}
		case nfqaPayload:
			payload = v
		case nfqaMark:
			if len(v) >= 4 {
				mark = binary.BigEndian.Uint32(v)
			}
		case nfqaTimestamp:
			if len(v) == 16 {
				ts = time.Unix(int64(binary.BigEndian.Uint64(v)), int64(binary.BigEndian.Uint64(v[8:]))*1000)
			}
		}
	})
	if !haveID {
		return Packet{}, 0, 0, false
	}
	if ts.IsZero() {
		ts = time.Now()
	}
	return Packet{
		Data: payload,
		Link: LinkTypeRawIP,
		CI:   gopacket.CaptureInfo{Timestamp: ts, CaptureLength: len(payload), Length: len(payload)},
	}, id, mark, true
}

// Held is a batch of packets the kernel holds for ftpgate.
type Held struct {
	Packets []Packet
	ids     []uint32
	marks   []uint32
	// Verdicts[i], set by the caller, is what becomes of packet i:
	// accepted (HeldPass, the zero value), or sent through ftpgate's
	// chain again with the mark (HeldAdmit, see QueueSource.Mark) or
	// without it (HeldRetry).
	Verdicts []HeldVerdict
}

// Fd is the socket to poll for held packets.
func (q *QueueSource) Fd() int { return q.fd }

// ReadHeld reads every held packet waiting, without blocking, into h. The
// packets' data is valid until the next ReadHeld.
func (q *QueueSource) ReadHeld(h *Held) error {
	h.Packets, h.ids, h.marks = h.Packets[:0], h.ids[:0], h.marks[:0]
	off := 0
	for len(q.buf)-off >= 65536 && !q.closed.Load() {
		n, err := rules.RecvNonblocking(q.fd, q.buf[off:], 0)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ENOBUFS) {
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading NFQUEUE %d: %w", q.num, err)
		}
		rules.NetlinkMessages(q.buf[off:off+n], func(typ uint16, data []byte) {
			if typ != unix.NFNL_SUBSYS_QUEUE<<8|nfqnlMsgPacket || len(data) < 4 {
				return
			}
			if p, id, mark, ok := decodeQueued(data[4:]); ok {
				h.Packets = append(h.Packets, p)
				h.ids = append(h.ids, id)
				h.marks = append(h.marks, mark)
			}
		})
		off += n
	}
	h.Verdicts = slices.Grow(h.Verdicts[:0], len(h.Packets))[:len(h.Packets)]
	clear(h.Verdicts)
	return nil
}

// Release gives every packet of h its verdict in one system call:
// admitted ones their own, then one batch accept for the rest.
func (q *QueueSource) Release(h *Held) error {
	if len(h.ids) == 0 || q.closed.Load() {
		return nil
	}
	out := q.out[:0]
	var acceptUpTo uint32
	accept := false
	for i, v := range h.Verdicts {
		switch {
		case v == HeldAdmit && q.MarkMask != 0:
			out = q.appendVerdict(out, false, h.ids[i], true, h.marks[i]&^q.MarkMask|q.Mark)
		case v == HeldRetry:
			out = q.appendVerdict(out, false, h.ids[i], true, h.marks[i]&^q.MarkMask)
		default:
			acceptUpTo, accept = h.ids[i], true
		}
	}
	if accept {
		out = q.appendVerdict(out, true, acceptUpTo, false, 0)
	}
	q.out = out
	if err := rawSend(q.fd, out); err != nil {
		return fmt.Errorf("releasing %d packets held on NFQUEUE %d: %w", len(h.ids), q.num, err)
	}
	return nil
}

// rawSend is a raw system call on the non-blocking socket, like
// rules.RecvNonblocking: it cannot block, and telling the Go scheduler
// about each one wakes its monitor thread, which cost more than the call.
func rawSend(fd int, b []byte) error {
	var sa unix.RawSockaddrNetlink // the kernel
	sa.Family = unix.AF_NETLINK
	_, _, errno := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
		0, uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa))
	if errno != 0 {
		return errno
	}
	return nil
}

// Close unbinds the queue and closes the socket. Packets still queued are
// released by the kernel (the queue rules carry the bypass flag).
func (q *QueueSource) Close() error {
	if !q.closed.Swap(true) {
		_ = q.config([]netlink.Attribute{{Type: nfqaCfgCmd, Data: []byte{nfqnlCfgCmdUnbind, 0, 0, 0}}})
	}
	_ = q.conn.Close()
	return nil
}
