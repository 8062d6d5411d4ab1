package nat

// SeqAdjust is what rewriting a TCP stream's bytes has done to the
// sequence numbers of one direction, as the kernel's seqadj extension
// (nf_conntrack_seqadj.c) keeps it: every rewrite that changed a
// segment's length is a correction at the segment's sequence number, and
// bytes after it are shifted by all corrections up to it.
//
// The kernel keeps one correction: a retransmission of a segment from
// before the last but one rewrite is shifted wrongly. SeqAdjust keeps the
// last MaxCorrections, which covers any window a control connection has
// in flight (a correction takes a line, and an announcement is answered
// before the next is sent).
//
// Sequence numbers in calls are the sender's own (before the shift) for
// Seq, and the receiver's (after it) for Ack, as they appear on the wire
// on either side.
type SeqAdjust struct {
	corr []correction // oldest first
}

// correction is one rewrite: bytes after pos (the rewritten segment's
// sequence number, the sender's) are shifted by after; bytes up to and
// including the segment itself by before (the previous correction's).
type correction struct {
	pos           uint32
	before, after int32
}

// MaxCorrections bounds what a SeqAdjust remembers (see SeqAdjust).
const MaxCorrections = 16

// Add records a rewrite of the segment at seq that changed its length by
// delta. A retransmission of the segment of the last correction (seq not
// after it) changes nothing: its rewrite is the same, and so is its
// delta.
func (a *SeqAdjust) Add(seq uint32, delta int32) {
	if delta == 0 {
		return
	}
	last := int32(0)
	if n := len(a.corr); n > 0 {
		if !seqAfter(seq, a.corr[n-1].pos) {
			return
		}
		last = a.corr[n-1].after
	}
	if len(a.corr) == MaxCorrections {
		a.corr = append(a.corr[:0], a.corr[1:]...)
	}
	a.corr = append(a.corr, correction{pos: seq, before: last, after: last + delta})
}

// Offset is the shift of everything sent so far: what a segment after
// the last correction gets.
func (a *SeqAdjust) Offset() int32 {
	if n := len(a.corr); n > 0 {
		return a.corr[n-1].after
	}
	return 0
}

// Seq is the shift of a segment of this direction that starts at seq
// (the sender's number): the correction of the last rewrite before it.
func (a *SeqAdjust) Seq(seq uint32) int32 {
	for i := len(a.corr) - 1; i >= 0; i-- {
		if seqAfter(seq, a.corr[i].pos) {
			return a.corr[i].after
		}
	}
	return a.first()
}

// Ack is the shift to take off a sequence number of this direction as
// the receiver has it (an acknowledgement, a SACK edge) to give the
// sender's: the kernel's test, ack minus the shift before a correction
// being after it, applied to each correction from the last.
func (a *SeqAdjust) Ack(ack uint32) int32 {
	for i := len(a.corr) - 1; i >= 0; i-- {
		if seqAfter(ack-uint32(a.corr[i].before), a.corr[i].pos) {
			return a.corr[i].after
		}
	}
	return a.first()
}

// first is the shift before the oldest correction remembered.
func (a *SeqAdjust) first() int32 {
	if len(a.corr) > 0 {
		return a.corr[0].before
	}
	return 0
}

// seqAfter is the kernel's after(a, b): a comes later in sequence space.
func seqAfter(a, b uint32) bool { return int32(a-b) > 0 }
