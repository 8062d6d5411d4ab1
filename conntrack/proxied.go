package conntrack

import (
	"time"

	"github.com/ftpgate/ftpgate/nat"
)

// ProxyConns is the control proxy as the tracker knows it: what it can
// be told to do with a connection whose session the tracker ended itself
// (a timeout, a reload).
type ProxyConns interface {
	CloseConn(id uint64)
}

// OpenProxied starts the session of a control connection the control
// proxy took over. A half-open session of the same connection, from the
// SYN the gateway dropped to hand it over, ends.
func (t *Tracker) OpenProxied(id uint64, tr nat.Translation, now time.Time) {
	t.env.advance(now)
	t.sessions.openProxied(id, tr, false)
}

// OpenTranslated starts the session of a translated control connection
// the packet path follows (nat.PacketPath): its bytes come in
// TranslatedBytes, segment by segment. A half-open session of the same
// connection, from its held SYN, ends. pickedUp: the connection is seen
// mid-stream (ftpgate started, or restarted, after it began).
func (t *Tracker) OpenTranslated(id uint64, tr nat.Translation, pickedUp bool, now time.Time) {
	t.env.advance(now)
	t.sessions.openProxied(id, tr, true)
	if s := t.sessions.proxied[id]; s != nil && pickedUp {
		s.pickUp(fromClient)
		s.pickUp(1)
	}
}

// TranslatedBytes takes the new bytes of one segment of session id, in
// order, at seq (the sender's sequence number; ack its acknowledgement
// of the other side, in that side's numbers), and returns what goes on
// in their place: the same bytes, with whole lines rewritten. What a
// line made ftpgate open must be committed before the segment goes on
// (Commit). closed says the session is gone: the connection must be cut.
func (t *Tracker) TranslatedBytes(id uint64, fromServer bool, seq uint32, data []byte, ack uint32, now time.Time) (out []byte, closed bool) {
	s := t.sessions.proxied[id]
	if s == nil || s.life.ended || !s.nat.packet {
		return nil, true
	}
	t.env.advance(now)
	d := fromClient
	if fromServer {
		d = 1 // from the server
		s.nat.serverSeen = true
	}
	n := s.nat
	n.segStart, n.edits = seq, n.edits[:0]
	n.lastAck[d], n.started[d] = ack, true
	s.Last = t.env.now
	s.bytes(d, seq, data, ack, t.env.now)
	n.delivered[d] = seq + uint32(len(data))
	if s.life.ended {
		return nil, true
	}
	return n.applyEdits(data, seq), false
}

// ProxiedBytes takes bytes the control proxy read on session id from one
// side, in order, and returns what to send on to the other side now:
// the same bytes, or lines rewritten, or less (the end of a line still
// to come, the lines of a multi-line reply held for its last). ack is
// how many bytes of the other side the proxy had sent on when it read
// these: the most the sender can have received when it wrote them.
// through is how many bytes of this side have gone on in all (as they
// came or rewritten), which the proxy gives as ack for the other side.
//
// What a line made ftpgate open must be committed before out is sent
// (Commit): the far side may connect the moment it reads it. closed
// says the session is gone and the connection must close.
func (t *Tracker) ProxiedBytes(id uint64, fromServer bool, data []byte, ack uint32, now time.Time) (out []byte, through uint32, closed bool) {
	s := t.sessions.proxied[id]
	if s == nil || s.life.ended {
		return nil, 0, true
	}
	t.env.advance(now)
	d := fromClient
	if fromServer {
		d = 1 // from the server (the parameter hides the constant)
		s.nat.serverSeen = true
	}
	n := s.nat
	n.out[d] = n.out[d][:0]
	seq := n.in[d]
	n.in[d] += uint32(len(data))
	s.Last = t.env.now
	s.bytes(d, seq, data, ack, t.env.now)
	if s.life.ended {
		return nil, 0, true
	}
	return n.out[d], n.in[d] - uint32(n.heldBack(d, s.lines[d].held())), false
}

// ProxiedEOF says one side of a proxied connection has closed: the
// session ends when the other closes too, or closeLinger later.
func (t *Tracker) ProxiedEOF(id uint64, fromServer bool, now time.Time) {
	if s := t.sessions.proxied[id]; s != nil && s.nat.closingAt.IsZero() {
		s.nat.closingAt = now
	}
}

// CloseProxied ends the session of a proxied connection that closed.
func (t *Tracker) CloseProxied(id uint64, reason string, now time.Time) {
	if s := t.sessions.proxied[id]; s != nil {
		t.env.advance(now)
		t.sessions.endProxied(s, closedSessionClosed, reason, false)
	}
}
