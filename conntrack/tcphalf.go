package conntrack

import (
	"bytes"
	"time"
)

// Directions of a control connection.
const (
	fromClient = 0
	fromServer = 1
)

func dirName(dir int) string {
	if dir == fromClient {
		return "client"
	}
	return "server"
}

// Sequence-number arithmetic modulo 2^32 (RFC 793 section 3.3).
func seqDiff(a, b uint32) int32   { return int32(a - b) }
func seqAfter(a, b uint32) bool   { return seqDiff(a, b) > 0 }
func seqAtLeast(a, b uint32) bool { return seqDiff(a, b) >= 0 }

// Bounds of what one direction may hold.
const (
	// maxOutOfOrder is the out-of-order data kept per direction. A
	// control connection has a few hundred bytes in flight; what does
	// not fit is dropped, and if its receiver then acknowledges it, the
	// session has lost bytes (see half.overflowed).
	maxOutOfOrder = 16 << 10
	// maxKept is how many delivered, not yet acknowledged bytes are kept
	// to compare with later copies of the same sequence range.
	maxKept = 8 << 10
	// maxWaiting bounds the bytes held back for the other direction to
	// catch up (causal order, see Session.release).
	maxWaiting = 32 << 10
	// windowSlack is the least receive window assumed, and unknownWindow
	// the one assumed when the window scale is unknown (a pickup): data
	// starting beyond what the receiver could accept is ignored.
	windowSlack   = 64 << 10
	unknownWindow = 1 << 20
)

// oooSegment is data that arrived before the bytes in front of it.
type oooSegment struct {
	seq    uint32
	data   []byte
	ack    uint32
	hasAck bool
}

func (o *oooSegment) end() uint32 { return o.seq + uint32(len(o.data)) }

// waiting is in-order data (or a gap) held back until the other
// direction has been delivered up to its acknowledgement number.
type waiting struct {
	seq    uint32
	data   []byte // a copy
	ack    uint32
	hasAck bool
	gap    uint32 // > 0: not data but this many lost bytes
	since  time.Time
}

// half is what ftpgate knows of one direction of a control connection.
type half struct {
	started   bool   // next is known: SYN seen, or picked up mid-stream
	synSeen   bool   // its SYN was seen
	next      uint32 // sequence number of the next byte to accept in order
	delivered uint32 // sequence number of the next byte to hand to the session
	fin       bool   // its FIN was seen, at finSeq
	finSeq    uint32
	closed    bool // the FIN was delivered
	wscale    int8 // window scale of this side's SYN, -1 if none or unknown

	// What the other side acknowledged of this direction, and the
	// receive window it advertised for it (scaled where known).
	peerAck      uint32
	peerAckOK    bool
	peerAckSince time.Time // when peerAck first went beyond next: bytes may be lost
	peerWin      uint32
	peerWinKnown bool

	ooo      []oooSegment // sorted by seq, not overlapping
	oooBytes int
	// overflowed: out-of-order data was dropped for lack of room, from
	// overflowAt on. Bytes the receiver then acknowledges were lost by
	// ftpgate's own limits, which a sender can provoke at will.
	overflowed bool
	overflowAt uint32

	// kept holds the accepted bytes from keptSeq to next that the
	// receiver has not acknowledged yet.
	kept    []byte
	keptSeq uint32

	wait      []waiting
	waitBytes int

	lastAck   uint32 // acknowledgement number of the latest delivered data segment
	lastAckOK bool
}

// passFin takes a FIN that is now in order: it occupies one sequence
// number, which the receiver acknowledges like a byte. The direction is
// closed once everything before the FIN was delivered.
func (h *half) passFin() {
	if !h.fin {
		return
	}
	if h.next == h.finSeq {
		h.next++
	}
	if h.delivered == h.finSeq && h.next == h.finSeq+1 && len(h.wait) == 0 {
		h.delivered++
		h.closed = true
	}
}

func (h *half) start(seq uint32) {
	h.started = true
	h.next, h.delivered, h.keptSeq = seq, seq, seq
	h.kept = h.kept[:0]
}

// window is how far beyond the receiver's acknowledgement a segment of
// this direction may start.
func (h *half) window(scaleKnown bool) uint32 {
	switch {
	case !h.peerWinKnown || !scaleKnown:
		return max(h.peerWin, unknownWindow)
	default:
		return max(h.peerWin, windowSlack)
	}
}

// base is where the receiver's window for this direction starts.
func (h *half) base() uint32 {
	if h.peerAckOK && seqAfter(h.peerAck, h.next) {
		return h.peerAck
	}
	return h.next
}

// keep remembers accepted bytes until their receiver acknowledges them.
func (h *half) keep(seq uint32, data []byte) {
	if seq != h.keptSeq+uint32(len(h.kept)) {
		h.kept, h.keptSeq = h.kept[:0], seq
	}
	h.kept = append(h.kept, data...)
	if over := len(h.kept) - maxKept; over > 0 {
		h.kept = h.kept[over:]
		h.keptSeq += uint32(over)
	}
}

// acked drops kept bytes the receiver has acknowledged.
func (h *half) acked(ack uint32) {
	n := seqDiff(ack, h.keptSeq)
	if n <= 0 {
		return
	}
	if int(n) >= len(h.kept) {
		h.keptSeq += uint32(len(h.kept))
		h.kept = h.kept[:0]
		if cap(h.kept) > 1024 {
			h.kept = nil // an idle session keeps nothing
		}
		return
	}
	h.kept = h.kept[n:]
	h.keptSeq += uint32(n)
}

// differs reports whether data, starting at seq, disagrees with bytes
// ftpgate has already accepted (kept or waiting out of order).
func (h *half) differs(seq uint32, data []byte) bool {
	if off := seqDiff(seq, h.keptSeq); len(h.kept) > 0 {
		lo, hi := max(int(off), 0), min(int(off)+len(data), len(h.kept))
		if lo < hi && !bytes.Equal(h.kept[lo:hi], data[lo-int(off):hi-int(off)]) {
			return true
		}
	}
	for i := range h.ooo {
		o := &h.ooo[i]
		off := int(seqDiff(seq, o.seq))
		lo, hi := max(off, 0), min(off+len(data), len(o.data))
		if lo < hi && !bytes.Equal(o.data[lo:hi], data[lo-off:hi-off]) {
			return true
		}
	}
	return false
}

// addOutOfOrder stores the parts of data, which starts beyond next,
// that no stored segment holds yet (those came first). It reports false
// if there was no room for all of them.
func (h *half) addOutOfOrder(seq uint32, data []byte, ack uint32, hasAck bool) bool {
	for len(data) > 0 {
		i := 0 // the first stored segment ending after seq
		for i < len(h.ooo) && !seqAfter(h.ooo[i].end(), seq) {
			i++
		}
		if i < len(h.ooo) && !seqAfter(h.ooo[i].seq, seq) { // it covers seq
			cut := min(int(seqDiff(h.ooo[i].end(), seq)), len(data))
			data, seq = data[cut:], seq+uint32(cut)
			continue
		}
		n := len(data)
		if i < len(h.ooo) {
			n = min(n, int(seqDiff(h.ooo[i].seq, seq)))
		}
		if h.oooBytes+n > maxOutOfOrder {
			if !h.overflowed || seqAfter(h.overflowAt, seq) {
				h.overflowAt = seq
			}
			h.overflowed = true
			return false
		}
		h.ooo = append(h.ooo, oooSegment{})
		copy(h.ooo[i+1:], h.ooo[i:])
		h.ooo[i] = oooSegment{seq: seq, data: append([]byte(nil), data[:n]...), ack: ack, hasAck: hasAck}
		h.oooBytes += n
		data, seq = data[n:], seq+uint32(n)
	}
	return true
}
