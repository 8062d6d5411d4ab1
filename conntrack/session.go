package conntrack

import (
	"log/slog"
	"net/netip"
	"time"
)

// Session is one FTP control connection and what it negotiated.
type Session struct {
	ID     string
	Client netip.AddrPort
	Server netip.AddrPort
	Start  time.Time
	Last   time.Time

	host        host
	env         *env
	h           [2]half
	scaleKnown  bool // both SYNs were seen, so window scaling is known
	established bool // it has carried data
	halfOpen    bool // counted against MaxHalfOpen
	pickedUp    bool // ftpgate did not see it start
	closingAt   time.Time
	ended       bool

	lines    [2]lineSplitter
	tls      [2]tlsWalker
	enc      encryption
	reply    reply
	pair     pairing
	epsvAll  bool
	limiter  logLimiter
	pinholes []*pinhole // open pinholes, oldest first
	// How the server ends its lines (learnt from its first), and whether
	// its last line ended in a bare LF although it ends lines with CR
	// LF: the next line then continues a reply and starts none.
	srvEOL       eolMode
	srvContinues bool
	// replyLike: the client sent text that looks like a reply; echoed:
	// with a server that ends lines with a bare LF, so that nothing of the
	// session opens (see echoRisk).
	replyLike, echoed bool
	// nat is set for a session of the control proxy: it is fed the
	// proxy's bytes (Tracker.ProxiedBytes), not packets, and rewrites
	// announcements before the far side sees them.
	nat *natSession
	// FTPS: the scoped range while encrypted; whether this stretch of
	// TLS was given one or refused already; implicit FTPS (encrypted from
	// the first byte); whether the TLS handshake completed; when AUTH was
	// accepted and CCC left TLS.
	scoped        *scopedState
	scopeTried    bool
	implicit      bool
	tlsRound      tlsRoundState
	tlsDone       bool
	authAt, cccAt time.Time
}

// tlsRoundState counts a TLS session's exchanges of data (see
// Session.tlsRounds).
type tlsRoundState struct {
	clientEnd  uint32 // end of the client's latest data record not yet answered
	clientSent bool
	rounds     int
}

// host is what a Session needs from the Tracker that runs it: where its
// channels and its end go.
type host interface {
	decide(s *Session, ch Channel, announcer netip.Addr)
	refuse(s *Session, ch Channel, kind RefusalKind, reason string)
	planActive(s *Session, ch Channel) *natPlan
	plannedReply(s *Session, cmd pendingCommand, code int)
	dropPlanned(s *Session, cmd pendingCommand, kind RefusalKind, reason string)
	closeSessionPinholes(s *Session, kind CloseKind, reason string)
	establish(s *Session)
	endSession(s *Session, kind CloseKind, reason string)
	openScoped(s *Session, why string, handshakeDone bool)
	closeScoped(s *Session, kind CloseKind, reason string)
	encryptedRecord(s *Session)
}

// env is what the sessions of one tracker share with it: the settings,
// the log, the clock, and the counters they add to.
type env struct {
	cfg      Config
	log      *slog.Logger
	now      time.Time // the latest packet or tick
	draining bool      // nothing more will come: waiting is over
	stats    Stats
}

// segment takes one valid TCP segment of direction d.
func (s *Session) segment(d int, seg *segment, now time.Time) {
	h := &s.h[d]
	switch {
	case seg.has(flagRST):
		if s.resetAcceptable(d, seg) {
			s.host.endSession(s, closedSessionClosed, "control connection reset")
		} else {
			s.env.stats.OutOfWindow++
		}
		return
	case seg.has(flagSYN):
		s.syn(d, seg)
		return // data on a SYN (TCP Fast Open) is not FTP before the greeting
	}
	if !h.started {
		if len(seg.payload) == 0 && !seg.has(flagFIN) {
			if seg.has(flagACK) {
				s.ackFrom(d, seg, now)
			}
			return
		}
		h.start(seg.seq)
		s.pickUp(d)
	}
	if seg.has(flagACK) {
		s.ackFrom(d, seg, now)
	}
	if len(seg.payload) > 0 || seg.has(flagFIN) {
		if seqDiff(seg.seq, h.base()) > int32(h.window(s.scaleKnown)) {
			s.env.stats.OutOfWindow++ // nothing its receiver would accept
			return
		}
		s.accept(d, seg, now)
	}
	s.release(now)
}

// syn handles a SYN (the client's) or a SYN-ACK (the server's).
func (s *Session) syn(d int, seg *segment) {
	h, o := &s.h[d], &s.h[1-d]
	if h.synSeen {
		return // retransmitted, or a new SYN on a live connection: ignored
	}
	if seg.has(flagACK) {
		if !o.synSeen {
			return
		}
		// The server answered a SYN: trust the ISN it acknowledges over
		// one a forged SYN may have claimed.
		if o.next != seg.ack && !s.established {
			o.start(seg.ack)
		}
	}
	h.synSeen = true
	h.start(seg.seq + 1)
	h.wscale = seg.wscale
	if o.synSeen {
		s.scaleKnown = true
		if h.wscale < 0 || o.wscale < 0 { // scaling only if both offered it
			h.wscale, o.wscale = -1, -1
		}
	}
}

// resetAcceptable reports whether a RST from d is in its receiver's window
// (RFC 793, as RFC 5961 and conntrack judge it): a forged reset with a
// random sequence number must not end a session.
func (s *Session) resetAcceptable(d int, seg *segment) bool {
	h, o := &s.h[d], &s.h[1-d]
	if !h.started {
		// A reset answering a SYN carries no known sequence number; it
		// must acknowledge the SYN.
		return seg.has(flagACK) && o.started && seg.ack == o.next
	}
	lo, hi := h.next, h.base()
	return seqDiff(seg.seq, lo) >= -1 && seqDiff(seg.seq, hi) <= int32(h.window(s.scaleKnown))
}

// ackFrom takes the acknowledgement and window a segment of d gives for
// the other direction.
func (s *Session) ackFrom(d int, seg *segment, now time.Time) {
	o := &s.h[1-d]
	if !o.started {
		// A pickup: the other direction's bytes before this
		// acknowledgement came before ftpgate was looking.
		o.start(seg.ack)
		s.pickUp(1 - d)
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
	if s.scaleKnown && s.h[d].wscale > 0 {
		shift = uint(s.h[d].wscale)
	}
	o.peerWin, o.peerWinKnown = uint32(seg.window)<<shift, true
}

// accept takes the data (and FIN) of a segment of d.
func (s *Session) accept(d int, seg *segment, now time.Time) {
	h := &s.h[d]
	seq, data := seg.seq, seg.payload
	if seg.has(flagFIN) && !h.fin {
		h.fin, h.finSeq = true, seq+uint32(len(data))
	}
	if seqAfter(h.next, seq) { // starts with bytes accepted before
		n := min(int(seqDiff(h.next, seq)), len(data))
		if h.differs(seq, data[:n]) {
			s.conflict(d)
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
		s.conflict(d)
	}
	if seq != h.next {
		if !h.addOutOfOrder(seq, data, seg.ack, seg.has(flagACK)) {
			s.env.stats.OutOfOrderDropped++
		}
		return
	}
	s.inOrder(d, seq, data, seg.ack, seg.has(flagACK), now)
	s.pullOutOfOrder(d, now)
}

// inOrder takes the next bytes of d and delivers them, unless the other
// direction must catch up first.
func (s *Session) inOrder(d int, seq uint32, data []byte, ack uint32, hasAck bool, now time.Time) {
	h := &s.h[d]
	h.keep(seq, data)
	h.next = seq + uint32(len(data))
	if !h.peerAckOK || !seqAfter(h.peerAck, h.next) {
		h.peerAckSince = time.Time{}
	}
	if len(h.wait) == 0 && s.causal(d, ack, hasAck) {
		s.deliver(d, seq, data, ack, hasAck, now)
		return
	}
	h.wait = append(h.wait, waiting{seq: seq, data: append([]byte(nil), data...), ack: ack, hasAck: hasAck, since: now})
	h.waitBytes += len(data)
}

// pullOutOfOrder takes the stored segments that are now in order.
func (s *Session) pullOutOfOrder(d int, now time.Time) {
	h := &s.h[d]
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
		s.inOrder(d, o.seq, o.data, o.ack, o.hasAck, now)
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
func (s *Session) causal(d int, ack uint32, hasAck bool) bool {
	o := &s.h[1-d]
	return !hasAck || !o.started || !seqAfter(ack, o.delivered)
}

// release delivers held-back bytes whose turn has come, and gives up on
// bytes that are lost: bytes a receiver acknowledged that ftpgate never
// saw, once they are overdue (at once when copies come in the kernel's
// own order, see Config.ReorderWait).
func (s *Session) release(now time.Time) {
	for progress := true; progress && !s.ended; {
		progress = false
		for d := range 2 {
			h := &s.h[d]
			for len(h.wait) > 0 && !s.ended {
				w := h.wait[0]
				if !s.causal(d, w.ack, w.hasAck) {
					break
				}
				h.wait = h.wait[1:]
				h.waitBytes -= len(w.data)
				s.deliverWaiting(d, w, now)
				progress = true
			}
			if len(h.wait) == 0 {
				h.wait = nil
			}
			h.passFin()
		}
		if progress || s.ended {
			continue
		}
		for d := range 2 {
			if s.skipLost(d, now) {
				progress = true
			}
		}
		if !progress {
			progress = s.forceOverdue(now)
		}
	}
	if !s.ended {
		s.checkClosed(now)
	}
}

func (s *Session) deliverWaiting(d int, w waiting, now time.Time) {
	if w.gap > 0 {
		s.lost(d, w.seq, w.gap)
		s.h[d].delivered = w.seq + w.gap
		return
	}
	s.deliver(d, w.seq, w.data, w.ack, w.hasAck, now)
}

// overdue reports whether something that started waiting at since has
// waited long enough.
func (s *Session) overdue(since, now time.Time) bool {
	return s.env.cfg.ReorderWait <= 0 || s.env.draining || !now.Before(since.Add(s.env.cfg.ReorderWait))
}

// skipLost gives up on the missing bytes of d that its receiver has
// acknowledged, up to the next stored segment or the acknowledgement.
func (s *Session) skipLost(d int, now time.Time) bool {
	h := &s.h[d]
	if !h.peerAckOK || !seqAfter(h.peerAck, h.next) || !s.overdue(h.peerAckSince, now) {
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
		s.deliverWaiting(d, gap, now)
	} else {
		h.wait = append(h.wait, gap)
	}
	if !seqAfter(h.peerAck, h.next) {
		h.peerAckSince = time.Time{}
	}
	s.pullOutOfOrder(d, now)
	return true
}

// forceOverdue delivers the oldest held-back bytes once overdue even
// though the other direction has not caught up: their acknowledgement
// points at bytes that are themselves held back (acknowledgements out of
// causal order, as retransmissions carrying newer ones can make them).
// Pairing is then not to be trusted.
func (s *Session) forceOverdue(now time.Time) bool {
	d := -1
	for x := range 2 {
		if len(s.h[x].wait) > 0 && (d < 0 || s.h[x].wait[0].since.Before(s.h[d].wait[0].since)) {
			d = x
		}
	}
	if d < 0 || !s.overdue(s.h[d].wait[0].since, now) && s.h[d].waitBytes <= maxWaiting {
		return false
	}
	h := &s.h[d]
	w := h.wait[0]
	h.wait = h.wait[1:]
	h.waitBytes -= len(w.data)
	s.pair.outOfStep(s, "acknowledgements out of order")
	s.deliverWaiting(d, w, now)
	return true
}

// deliver hands in-order bytes of d to the protocol.
func (s *Session) deliver(d int, seq uint32, data []byte, ack uint32, hasAck bool, now time.Time) {
	h := &s.h[d]
	h.delivered = seq + uint32(len(data))
	if hasAck {
		h.lastAck, h.lastAckOK = ack, true
	}
	s.Last = now
	if !s.established {
		s.host.establish(s)
		if s.ended {
			return
		}
	}
	s.bytes(d, seq, data, ack, now)
}

// lost is told that n bytes of d starting at seq will never be seen.
//
// Commands or replies may have been among them, and no count of replies
// can then prove which command a later 200 answers: a client that
// pipelines commands can keep one unanswered across any point that looks
// quiet. A 227/228/229 still pairs by what it says; active mode is
// refused for the rest of the session.
func (s *Session) lost(d int, seq, n uint32) {
	s.env.stats.GapBytes += uint64(n)
	h := &s.h[d]
	why := "bytes from the " + dirName(d) + " were lost to ftpgate"
	if h.overflowed && seqAfter(seq+n, h.overflowAt) {
		why = "out-of-order data from the " + dirName(d) + " beyond ftpgate's buffer was lost"
	}
	s.pair.distrust(s, why)
	s.gap(d)
}

// conflict is told that two copies of the same bytes of d differ: which
// one the receiver took is unknown, and with it how many commands or
// replies they held.
func (s *Session) conflict(d int) {
	s.env.stats.Conflicts++
	s.pair.distrust(s, "two copies of the same bytes from the "+dirName(d)+" differ")
}

// checkClosed ends the session once both FINs are delivered, and notes
// when the first one was.
func (s *Session) checkClosed(now time.Time) {
	closed := 0
	for d := range 2 {
		if s.h[d].closed {
			closed++
		}
	}
	switch {
	case closed == 2:
		s.host.endSession(s, closedSessionClosed, "control connection closed")
	case closed == 1 && s.closingAt.IsZero():
		s.closingAt = now
	}
}
