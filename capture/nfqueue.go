package capture

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/ftpgate/ftpgate/internal/nlattr"
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
	nfqaCt         = 11
	ctaHelp        = 5 // in NFQA_CT (linux/netfilter/nfnetlink_conntrack.h)
	ctaHelpName    = 1

	nfqaCfgCmd         = 1
	nfqaCfgParams      = 2
	nfqaCfgQueueMaxlen = 3
	nfqaCfgMask        = 4
	nfqaCfgFlags       = 5

	nfqnlCfgCmdBind   = 1
	nfqnlCfgCmdUnbind = 2
	nfqnlCopyPacket   = 2
	nfqaCfgFFailOpen  = 1

	nfDrop   = 0
	nfAccept = 1
	nfRepeat = 4
)

// QueueSource is the held half of inline capture (see
// rules.AddInlineRules): the kernel queues the SYN of each new control
// connection and each data SYN that beat its pinhole, and holds them
// until ftpgate has caught up with the copies of the control traffic.
// Nothing is dropped here: a packet is accepted, or sent through
// ftpgate's chain again, with the admit mark (Admit) or without (Retry).
type QueueSource struct {
	conn   *netlink.Conn
	fd     int
	req    requester
	closed atomic.Bool
	num    uint16
	buf    []byte
	out    []byte
	held   []Packet
	ids    []uint32
	marks  []uint32
	// Mark, within MarkMask, is set in the packet mark of each packet
	// given Admit, which then goes through ftpgate's chain again
	// (NF_REPEAT), where rules.AddInlineRules' first rule moves it to the
	// conntrack mark: how a held data SYN whose pinhole is open passes
	// the admin's rules, like one that met its pinhole in the kernel.
	Mark, MarkMask uint32

	// Conntrack says whether the kernel can attach conntrack entries to
	// queued packets (CONFIG_NETFILTER_NETLINK_GLUE_CT), as found when
	// the queue was bound; ConntrackErr when it could not tell.
	Conntrack    bool
	ConntrackErr error

	// ClearHelpers: every packet released carries an NFQA_CT that takes
	// its connection's helper away, each in a verdict of its own (a
	// batch verdict carries none). The NAT packet path's helper stub
	// (see Packet.KernelShifts) is a userspace helper, and the kernel
	// confirms a connection with such a helper as it reinjects a queued
	// packet of it (nf_confirm_cthelper): a control connection's SYN
	// held here would be confirmed before source NAT, which is then
	// never set up. Without the helper the connection keeps its helper
	// extension, which is all the stub was for.
	ClearHelpers bool
}

// OpenQueue binds queue num in the given network namespace (0: current).
// The queue fails open when full, so control traffic never stalls.
func OpenQueue(num uint16, maxLen uint32, netns int) (*QueueSource, error) {
	return openQueue(num, maxLen, netns, true)
}

// OpenRewriteQueue binds queue num for packets that must not go on as
// they came: when the queue is full the kernel drops them, and their
// senders send them again. A translated control connection whose
// sequence numbers ftpgate shifts would lose its place in the stream if
// one segment slipped through unshifted.
func OpenRewriteQueue(num uint16, maxLen uint32, netns int) (*QueueSource, error) {
	return openQueue(num, maxLen, netns, false)
}

func openQueue(num uint16, maxLen uint32, netns int, failOpen bool) (*QueueSource, error) {
	q, err := dialQueue(num, netns)
	if err != nil {
		return nil, err
	}
	conn := q.conn
	q.buf = make([]byte, 1<<17)
	if unix.SetsockoptInt(q.fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20) != nil {
		_ = unix.SetsockoptInt(q.fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	}
	// Errors of verdicts for packets that left the queue meanwhile
	// are of no use; the reader would only have to skip them.
	_ = unix.SetsockoptInt(q.fd, unix.SOL_NETLINK, unix.NETLINK_NO_ENOBUFS, 1)
	params := binary.BigEndian.AppendUint32(nil, 0xffff)
	params = append(params, nfqnlCopyPacket)
	mask := binary.BigEndian.AppendUint32(nil, nfqaCfgFFailOpen)
	flags := binary.BigEndian.AppendUint32(nil, 0)
	if failOpen {
		flags = mask
	}
	for _, attrs := range [][]netlink.Attribute{
		bindCommand,
		{
			{Type: nfqaCfgParams, Data: params},
			{Type: nfqaCfgQueueMaxlen, Data: binary.BigEndian.AppendUint32(nil, maxLen)},
			{Type: nfqaCfgMask, Data: mask},
			{Type: nfqaCfgFlags, Data: flags},
		},
	} {
		if err := q.config(attrs); err != nil {
			conn.Close()
			return nil, fmt.Errorf("binding NFQUEUE %d (is another ftpgate running, or another program using it? see --queue): %w", num, err)
		}
	}
	// Whether this kernel could carry conntrack attributes on the queue
	// (the NFQUEUE glue): asked here, on the bound queue, rather than by
	// binding the number a second time.
	q.Conntrack, q.ConntrackErr = q.askConntrack()
	return q, nil
}

// bindCommand binds a queue to the socket that sends it: command, pad,
// pf (unused since Linux 3.8).
var bindCommand = []netlink.Attribute{{Type: nfqaCfgCmd, Data: []byte{nfqnlCfgCmdBind, 0, 0, 0}}}

// dialQueue opens the netlink socket of queue num, not bound yet.
func dialQueue(num uint16, netns int) (*QueueSource, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netns})
	if err != nil {
		return nil, fmt.Errorf("opening nfqueue socket: %w", err)
	}
	q := &QueueSource{conn: conn, num: num}
	raw, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("nfqueue socket: %w", err)
	}
	// The descriptor stays valid while conn is open: the loop polls it.
	_ = raw.Control(func(fd uintptr) { q.fd = int(fd) })
	q.req = requester{conn: conn, fd: q.fd}
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
	return q.req.request(unix.NFNL_SUBSYS_QUEUE<<8|nfqnlMsgConfig, append(q.header(), data...))
}

// appendVerdict appends one verdict message for id (accept, or repeat
// with the packet mark set to mark), or a batch accept of every id up to
// id.
func (q *QueueSource) appendVerdict(b []byte, batch bool, id uint32, repeat bool, mark uint32) []byte {
	v := uint32(nfAccept)
	if repeat {
		v = nfRepeat
	}
	return q.appendVerdictOf(b, batch, id, v, mark, nil, false)
}

// appendVerdictOf appends one verdict message: v for id (with the packet
// mark set to mark, for a repeat; the packet replaced by payload, if
// any; with an NFQA_CT that takes the connection's helper away if ct),
// or for every id up to id.
func (q *QueueSource) appendVerdictOf(b []byte, batch bool, id, v, mark uint32, payload []byte, ct bool) []byte {
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
	b = binary.BigEndian.AppendUint32(b, v)
	b = binary.BigEndian.AppendUint32(b, id)
	if v == nfRepeat {
		b = attr(b, nfqaMark, 4)
		b = binary.BigEndian.AppendUint32(b, mark)
	}
	if payload != nil {
		b = attr(b, nfqaPayload, len(payload))
		b = append(b, payload...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
	}
	if ct {
		// NFQA_CT { CTA_HELP { CTA_HELP_NAME "" } }: see Packet.KernelShifts.
		b = attr(b, unix.NLA_F_NESTED|nfqaCt, 12)
		b = attr(b, unix.NLA_F_NESTED|ctaHelp, 8)
		b = attr(b, ctaHelpName, 1)
		b = append(b, 0, 0, 0, 0)
	}
	binary.NativeEndian.PutUint32(b[start:], uint32(len(b)-start))
	return b
}

// decodeQueued reads a packet message: the packet, its queue id and its
// packet mark.
func decodeQueued(attrs []byte) (Packet, uint32, uint32, bool) {
	var id, mark uint32
	var hook uint8
	var haveID bool
	var payload []byte
	var ts time.Time
	nlattr.Walk(attrs, func(typ uint16, v []byte) {
		switch typ {
		case nfqaPacketHdr:
			if len(v) >= 7 { // packet id, hw protocol, hook
				id, haveID, hook = binary.BigEndian.Uint32(v), true, v[6]
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
	return Packet{Data: payload, Link: LinkTypeRawIP, Time: ts, Kind: Held, Hook: hook}, id, mark, true
}

// Fd is the socket to poll for held packets.
func (q *QueueSource) Fd() int { return q.fd }

// Read hands every held packet waiting to fn, without blocking. The
// packets stay valid, and their Verdicts are read, until Release.
func (q *QueueSource) Read(fn func(*Packet)) error {
	q.held, q.ids, q.marks = q.held[:0], q.ids[:0], q.marks[:0]
	// Packets queued while a configuration request waited for its
	// answer: each waits for its verdict like any other.
	for _, b := range q.req.takeEarly() {
		q.collect(b)
	}
	off := 0
	for len(q.buf)-off >= 65536 && !q.closed.Load() {
		n, err := recvNonblocking(q.fd, q.buf[off:], 0)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ENOBUFS) {
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading NFQUEUE %d: %w", q.num, err)
		}
		q.collect(q.buf[off : off+n])
		off += n
	}
	for i := range q.held {
		fn(&q.held[i])
	}
	return nil
}

// collect adds the packets of one datagram to those of this Read. They
// point into b, which must stay untouched until Release.
func (q *QueueSource) collect(b []byte) {
	netlinkMessages(b, func(typ uint16, data []byte) {
		if typ != unix.NFNL_SUBSYS_QUEUE<<8|nfqnlMsgPacket || len(data) < 4 {
			return
		}
		if p, id, mark, ok := decodeQueued(data[4:]); ok {
			q.held = append(q.held, p)
			q.ids = append(q.ids, id)
			q.marks = append(q.marks, mark)
		}
	})
}

// Release gives every packet of the last Read its verdict in one system
// call: the repeated ones their own, then one batch accept for the rest.
func (q *QueueSource) Release() error {
	if len(q.ids) == 0 || q.closed.Load() {
		return nil
	}
	out := q.verdicts()
	n := len(q.ids)
	q.ids = q.ids[:0]
	if err := sendToKernel(q.fd, out); err != nil {
		return fmt.Errorf("releasing %d packets held on NFQUEUE %d: %w", n, q.num, err)
	}
	return nil
}

// verdicts are the messages that release the packets of the last Read.
func (q *QueueSource) verdicts() []byte {
	out := q.out[:0]
	var acceptUpTo uint32
	accept := false
	clear := q.ClearHelpers
	for i := range q.held {
		switch v := q.held[i].Verdict; {
		case v == Admit && q.MarkMask != 0:
			out = q.appendVerdictOf(out, false, q.ids[i], nfRepeat, q.marks[i]&^q.MarkMask|q.Mark, nil, clear)
		case v == Retry:
			out = q.appendVerdictOf(out, false, q.ids[i], nfRepeat, q.marks[i]&^q.MarkMask, nil, clear)
		case v == Drop:
			out = q.appendVerdictOf(out, false, q.ids[i], nfDrop, 0, nil, false)
		case q.held[i].Replace != nil:
			out = q.appendVerdictOf(out, false, q.ids[i], nfAccept, 0, q.held[i].Replace, q.held[i].KernelShifts || clear)
		case clear:
			out = q.appendVerdictOf(out, false, q.ids[i], nfAccept, 0, nil, true)
		default:
			acceptUpTo, accept = q.ids[i], true
		}
	}
	if accept {
		out = q.appendVerdict(out, true, acceptUpTo, false, 0)
	}
	q.out = out
	return out
}

// Close unbinds the queue and closes the socket. Packets still queued are
// released by the kernel (the queue rules carry the bypass flag).
func (q *QueueSource) Close() error {
	if !q.closed.Swap(true) {
		q.req.closing = true
		_ = q.config([]netlink.Attribute{{Type: nfqaCfgCmd, Data: []byte{nfqnlCfgCmdUnbind, 0, 0, 0}}})
	}
	_ = q.conn.Close()
	return nil
}
