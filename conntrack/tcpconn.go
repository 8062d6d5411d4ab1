package conntrack

import "time"

// tcpConn is ftpgate's own TCP tracking of one control connection, both
// directions: it judges each segment as the receiver's TCP would (the
// window, resets, what a FIN ends), puts the bytes in order, and hands
// them on in causal order, so that a reply is never read before the
// command it answers.
type tcpConn struct {
	env        *env
	h          [2]half
	scaleKnown bool      // both SYNs were seen, so window scaling is known
	closingAt  time.Time // the first FIN was delivered
	// established: the session has carried FTP (its table says so); a
	// SYN-ACK no longer moves the client's initial sequence number.
	established bool
}

// streamUser is what a tcpConn hands its bytes, and its troubles, to:
// the session. Its methods are called from within segment and release.
type streamUser interface {
	// pickUp: direction d started before ftpgate saw it.
	pickUp(d int)
	// deliver takes in-order bytes of d; ack is what its sender had
	// received of the other direction when it sent them (valid if hasAck).
	deliver(d int, seq uint32, data []byte, ack uint32, hasAck bool, now time.Time)
	// lost: bytes of d will never be seen.
	lost(d int, why string)
	// distrust: two copies of the same bytes differed, so what the
	// receiver read is unknown.
	distrust(why string)
	// outOfStep: bytes were delivered out of causal order.
	outOfStep(why string)
	// closed: the connection is over (both FINs, or an acceptable RST).
	closed(reason string)
	// over reports whether the user has ended.
	over() bool
}

func newTCPConn(e *env) tcpConn {
	c := tcpConn{env: e}
	for d := range c.h {
		c.h[d].wscale = -1
	}
	return c
}

// segment takes one valid TCP segment of direction d.
func (c *tcpConn) segment(u streamUser, d int, seg *segment, now time.Time) {
	h := &c.h[d]
	switch {
	case seg.has(flagRST):
		if c.resetAcceptable(d, seg) {
			u.closed("control connection reset")
		} else {
			c.env.stats.OutOfWindow++
		}
		return
	case seg.has(flagSYN):
		c.syn(d, seg)
		return // data on a SYN (TCP Fast Open) is not FTP before the greeting
	}
	if !h.started {
		if len(seg.payload) == 0 && !seg.has(flagFIN) {
			if seg.has(flagACK) {
				c.ackFrom(u, d, seg, now)
			}
			return
		}
		h.start(seg.seq)
		u.pickUp(d)
	}
	if seg.has(flagACK) {
		c.ackFrom(u, d, seg, now)
	}
	if len(seg.payload) > 0 || seg.has(flagFIN) {
		if seqDiff(seg.seq, h.base()) > int32(h.window(c.scaleKnown)) {
			c.env.stats.OutOfWindow++ // nothing its receiver would accept
			return
		}
		c.accept(u, d, seg, now)
	}
	c.release(u, now)
}

// syn handles a SYN (the client's) or a SYN-ACK (the server's).
func (c *tcpConn) syn(d int, seg *segment) {
	h, o := &c.h[d], &c.h[1-d]
	if h.synSeen {
		return // retransmitted, or a new SYN on a live connection: ignored
	}
	if seg.has(flagACK) {
		if !o.synSeen {
			return
		}
		// The server answered a SYN: trust the ISN it acknowledges over
		// one a forged SYN may have claimed.
		if o.next != seg.ack && !c.established {
			o.start(seg.ack)
		}
	}
	h.synSeen = true
	h.start(seg.seq + 1)
	h.wscale = seg.wscale
	if o.synSeen {
		c.scaleKnown = true
		if h.wscale < 0 || o.wscale < 0 { // scaling only if both offered it
			h.wscale, o.wscale = -1, -1
		}
	}
}

// reusedBy reports whether a client SYN starts a new connection on the
// ports of this one, which has begun closing: its sequence number is not
// this one's.
func (c *tcpConn) reusedBy(seg *segment) bool {
	return seg.has(flagSYN) && !seg.has(flagACK) && !c.closingAt.IsZero() && seg.seq+1 != c.h[fromClient].next
}

// resetAcceptable reports whether a RST from d is in its receiver's window
// (RFC 793, as RFC 5961 and conntrack judge it): a forged reset with a
// random sequence number must not end a session.
func (c *tcpConn) resetAcceptable(d int, seg *segment) bool {
	h, o := &c.h[d], &c.h[1-d]
	if !h.started {
		// A reset answering a SYN carries no known sequence number; it
		// must acknowledge the SYN.
		return seg.has(flagACK) && o.started && seg.ack == o.next
	}
	lo, hi := h.next, h.base()
	return seqDiff(seg.seq, lo) >= -1 && seqDiff(seg.seq, hi) <= int32(h.window(c.scaleKnown))
}

// ackFrom takes the acknowledgement and window a segment of d gives for
// the other direction.
func (c *tcpConn) ackFrom(u streamUser, d int, seg *segment, now time.Time) {
	o := &c.h[1-d]
	if !o.started {
		// A pickup: the other direction's bytes before this
		// acknowledgement came before ftpgate was looking.
		o.start(seg.ack)
		u.pickUp(1 - d)
	}
	if seqDiff(seg.ack, o.next) > int32(unknownWindow) {
		return // acknowledges data far beyond anything sent: ignored
	}
	if !o.peerAckOK || seqAfter(seg.ack, o.peerAck) {
		o.peerAck, o.peerAckOK = seg.ack, true
		o.acked(seg.ack)
	}
	if seqAfter(o.peerAck, o.next) && o.peerAckSince.IsZero() {
		o.peerAckSince = now
	}
	shift := uint(0)
	if c.scaleKnown && c.h[d].wscale > 0 {
		shift = uint(c.h[d].wscale)
	}
	o.peerWin, o.peerWinKnown = uint32(seg.window)<<shift, true
}

// accept takes the data (and FIN) of a segment of d.
func (c *tcpConn) accept(u streamUser, d int, seg *segment, now time.Time) {
	h := &c.h[d]
	seq, data := seg.seq, seg.payload
	if seg.has(flagFIN) && !h.fin {
		h.fin, h.finSeq = true, seq+uint32(len(data))
	}
	if seqAfter(h.next, seq) { // starts with bytes accepted before
		n := min(int(seqDiff(h.next, seq)), len(data))
		if h.differs(seq, data[:n]) {
			c.conflict(u, d)
		}
		data, seq = data[n:], seq+uint32(n)
	}
	if h.fin && seqAfter(seq+uint32(len(data)), h.finSeq) { // nothing after a FIN
		data = data[:max(0, int(seqDiff(h.finSeq, seq)))]
	}
	if len(data) == 0 {
		h.passFin()
		return
	}
	if h.differs(seq, data) {
		c.conflict(u, d)
	}
	if seq != h.next {
		if !h.addOutOfOrder(seq, data, seg.ack, seg.has(flagACK)) {
			c.env.stats.OutOfOrderDropped++
		}
		return
	}
	c.inOrder(u, d, seq, data, seg.ack, seg.has(flagACK), now)
	c.pullOutOfOrder(u, d, now)
}

// inOrder takes the next bytes of d and delivers them, unless the other
// direction must catch up first.
func (c *tcpConn) inOrder(u streamUser, d int, seq uint32, data []byte, ack uint32, hasAck bool, now time.Time) {
	h := &c.h[d]
	h.keep(seq, data)
	h.next = seq + uint32(len(data))
	if !h.peerAckOK || !seqAfter(h.peerAck, h.next) {
		h.peerAckSince = time.Time{}
	}
	if len(h.wait) == 0 && c.causal(d, ack, hasAck) {
		c.deliver(u, d, seq, data, ack, hasAck, now)
		return
	}
	h.wait = append(h.wait, waiting{seq: seq, data: append([]byte(nil), data...), ack: ack, hasAck: hasAck, since: now})
	h.waitBytes += len(data)
}

// pullOutOfOrder takes the stored segments that are now in order.
func (c *tcpConn) pullOutOfOrder(u streamUser, d int, now time.Time) {
	h := &c.h[d]
	for len(h.ooo) > 0 && !seqAfter(h.ooo[0].seq, h.next) {
		o := h.ooo[0]
		h.ooo = h.ooo[1:]
		h.oooBytes -= len(o.data)
		if cut := int(seqDiff(h.next, o.seq)); cut > 0 {
			if cut >= len(o.data) {
				continue
			}
			o.data, o.seq = o.data[cut:], o.seq+uint32(cut)
		}
		c.inOrder(u, d, o.seq, o.data, o.ack, o.hasAck, now)
	}
	if len(h.ooo) == 0 {
		h.ooo = nil
	}
	h.passFin()
}

// causal reports whether bytes of d, sent by a host that had received the
// other direction up to ack, may be delivered: ftpgate has delivered
// everything of the other direction that its sender had seen. A reply is
// thus never read before the command it answers, nor a command before
// the reply it follows, whichever order the copies came in.
func (c *tcpConn) causal(d int, ack uint32, hasAck bool) bool {
	o := &c.h[1-d]
	return !hasAck || !o.started || !seqAfter(ack, o.delivered)
}

// release delivers held-back bytes whose turn has come, and gives up on
// bytes that are lost: bytes a receiver acknowledged that ftpgate never
// saw, once they are overdue (at once when copies come in the kernel's
// own order, see Config.ReorderWait).
func (c *tcpConn) release(u streamUser, now time.Time) {
	for progress := true; progress && !u.over(); {
		progress = c.deliverCaught(u, now)
		if progress || u.over() {
			continue
		}
		for d := range 2 {
			if c.skipLost(u, d, now) {
				progress = true
			}
		}
		if !progress {
			progress = c.forceOverdue(u, now)
		}
	}
	if !u.over() {
		c.checkClosed(u, now)
	}
}

// deliverCaught delivers, both ways, the held-back bytes whose other
// direction has caught up; it reports whether it delivered any.
func (c *tcpConn) deliverCaught(u streamUser, now time.Time) bool {
	progress := false
	for d := range 2 {
		h := &c.h[d]
		for len(h.wait) > 0 && !u.over() {
			w := h.wait[0]
			if !c.causal(d, w.ack, w.hasAck) {
				break
			}
			h.wait = h.wait[1:]
			h.waitBytes -= len(w.data)
			c.deliverWaiting(u, d, w, now)
			progress = true
		}
		if len(h.wait) == 0 {
			h.wait = nil
		}
		h.passFin()
	}
	return progress
}

func (c *tcpConn) deliverWaiting(u streamUser, d int, w waiting, now time.Time) {
	if w.gap > 0 {
		c.lost(u, d, w.seq, w.gap)
		c.h[d].delivered = w.seq + w.gap
		return
	}
	c.deliver(u, d, w.seq, w.data, w.ack, w.hasAck, now)
}

// overdue reports whether something that started waiting at since has
// waited long enough.
func (c *tcpConn) overdue(since, now time.Time) bool {
	return c.env.cfg.ReorderWait <= 0 || c.env.draining || !now.Before(since.Add(c.env.cfg.ReorderWait))
}

// skipLost gives up on the missing bytes of d that its receiver has
// acknowledged, up to the next stored segment or the acknowledgement.
func (c *tcpConn) skipLost(u streamUser, d int, now time.Time) bool {
	h := &c.h[d]
	if !h.peerAckOK || !seqAfter(h.peerAck, h.next) || !c.overdue(h.peerAckSince, now) {
		return false
	}
	to := h.peerAck
	if len(h.ooo) > 0 && seqAfter(to, h.ooo[0].seq) {
		to = h.ooo[0].seq
	}
	n := uint32(seqDiff(to, h.next))
	gap := waiting{seq: h.next, gap: n, since: now}
	h.next = to
	h.kept, h.keptSeq = h.kept[:0], to
	if len(h.wait) == 0 {
		c.deliverWaiting(u, d, gap, now)
	} else {
		h.wait = append(h.wait, gap)
	}
	if !seqAfter(h.peerAck, h.next) {
		h.peerAckSince = time.Time{}
	}
	c.pullOutOfOrder(u, d, now)
	return true
}

// forceOverdue delivers the oldest held-back bytes once overdue even
// though the other direction has not caught up: their acknowledgement
// points at bytes that are themselves held back (acknowledgements out of
// causal order, as retransmissions carrying newer ones can make them).
// Pairing is then not to be trusted.
func (c *tcpConn) forceOverdue(u streamUser, now time.Time) bool {
	d := -1
	for x := range 2 {
		if len(c.h[x].wait) > 0 && (d < 0 || c.h[x].wait[0].since.Before(c.h[d].wait[0].since)) {
			d = x
		}
	}
	if d < 0 || !c.overdue(c.h[d].wait[0].since, now) && c.h[d].waitBytes <= maxWaiting {
		return false
	}
	h := &c.h[d]
	w := h.wait[0]
	h.wait = h.wait[1:]
	h.waitBytes -= len(w.data)
	u.outOfStep("acknowledgements out of order")
	c.deliverWaiting(u, d, w, now)
	return true
}

// deliver hands in-order bytes of d to the user.
func (c *tcpConn) deliver(u streamUser, d int, seq uint32, data []byte, ack uint32, hasAck bool, now time.Time) {
	h := &c.h[d]
	h.delivered = seq + uint32(len(data))
	if hasAck {
		h.lastAck, h.lastAckOK = ack, true
	}
	u.deliver(d, seq, data, ack, hasAck, now)
}

// lost is told that n bytes of d starting at seq will never be seen.
func (c *tcpConn) lost(u streamUser, d int, seq, n uint32) {
	c.env.stats.GapBytes += uint64(n)
	h := &c.h[d]
	why := "bytes from the " + dirName(d) + " were lost to ftpgate"
	if h.overflowed && seqAfter(seq+n, h.overflowAt) {
		why = "out-of-order data from the " + dirName(d) + " beyond ftpgate's buffer was lost"
	}
	u.lost(d, why)
}

// conflict is told that two copies of the same bytes of d differ: which
// one the receiver took is unknown, and with it how many commands or
// replies they held.
func (c *tcpConn) conflict(u streamUser, d int) {
	c.env.stats.Conflicts++
	u.distrust("two copies of the same bytes from the " + dirName(d) + " differ")
}

// checkClosed ends the connection once both FINs are delivered, and
// notes when the first one was.
func (c *tcpConn) checkClosed(u streamUser, now time.Time) {
	closed := 0
	for d := range 2 {
		if c.h[d].closed {
			closed++
		}
	}
	switch {
	case closed == 2:
		u.closed("control connection closed")
	case closed == 1 && c.closingAt.IsZero():
		c.closingAt = now
	}
}

// forget drops what the connection holds (the session has ended).
func (c *tcpConn) forget() { c.h = [2]half{} }
