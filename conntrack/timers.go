package conntrack

import (
	"time"

	"github.com/gopacket/gopacket/layers"
)

// Expire ends idle sessions and those that carried no FTP in time, gives
// up on bytes overdue for reassembly, and forgets pinholes whose kernel
// timeout has passed. now is wall time for live capture, packet time for
// files.
func (t *Tracker) Expire(now time.Time) {
	if now.After(t.now) {
		t.now = now
	}
	for _, s := range t.sessions {
		switch {
		case !s.established && !now.Before(s.Start.Add(t.cfg.HandshakeTimeout)):
			t.stats.HalfOpenExpired++
			t.endSession(s, closedSessionClosed, "no FTP within the handshake timeout")
		case !now.Before(s.Last.Add(t.cfg.IdleTimeout)):
			t.endSession(s, closedSessionIdle, "control connection idle")
		case !s.closingAt.IsZero() && !now.Before(s.closingAt.Add(closeLinger)):
			t.endSession(s, closedSessionClosed, "control connection closed")
		default:
			s.release(now)
			t.expireScoped(s, now)
		}
	}
	t.expireProxied(now)
	for k, at := range t.ended {
		if now.Sub(at) >= tombstoneFor {
			delete(t.ended, k)
		}
	}
	for k, at := range t.retried {
		if now.Sub(at) >= retriedFor {
			delete(t.retried, k)
		}
	}
	for k, p := range t.pinholes {
		if !now.Before(p.expires) {
			t.closePinhole(k, p, closedTimeout, "timeout")
		}
	}
	t.forgetClosing(now, false)
	t.expireAdmitted(now, false)
}

// IsControl reports whether a raw IP packet is TCP to or from a control
// port.
func (t *Tracker) IsControl(data []byte) bool {
	var seg segment
	return decode(data, LinkTypeRawIP, &seg) == decodedTCP && (t.controls[seg.src.Port()] || t.controls[seg.dst.Port()])
}

// UsedReport takes the kernel's report of the first packet of a data
// connection that used a pinhole (its headers; the rest may be cut off).
func (t *Tracker) UsedReport(data []byte) {
	if key, ok := synKey(data); ok {
		t.PinholeConsumed(key)
	}
}

// CopiesLost takes the count of the times copies of control traffic were
// lost (the NFLOG socket overflowed) and warns when it grows.
func (t *Tracker) CopiesLost(n uint64) {
	if n != t.stats.CopiesLost {
		t.stats.CopiesLost = n
		t.warnCap(2, "copies of control traffic lost (NFLOG socket overflowed); sessions that lost bytes refuse active mode from then on",
			"overflows_so_far", n)
	}
}

// Tick runs the tracker's timers at now, wall time: expiry once a
// second, and the commit of pinhole changes at most CommitDelay after the
// first of them was queued. It returns when it wants to run next. It also
// publishes the counters for Snapshot.
//
// Inline, a client usually connects within the commit delay: its SYN is
// held, admitted from the pinhole table (AdmitHeldSYN), and the add is
// cancelled before the kernel ever saw it. Only pinholes not used that
// fast cost a commit, and then meet their SYN in the kernel.
func (t *Tracker) Tick(now time.Time) time.Time {
	if t.nextExpire.IsZero() {
		t.nextExpire = now.Add(time.Second)
	}
	if !now.Before(t.nextExpire) {
		t.Expire(now)
		t.nextExpire = now.Add(time.Second)
	}
	switch {
	case !t.dirty:
		t.dirtySince = time.Time{}
	case t.urgent:
		// A scoped range changed: no commit delay (see openScoped).
		t.dirtySince = now.Add(-t.cfg.CommitDelay)
	case t.dirtySince.IsZero():
		t.dirtySince = now
	}
	t.urgent = false
	if !t.dirtySince.IsZero() && !now.Before(t.dirtySince.Add(t.cfg.CommitDelay)) {
		t.dirtySince = time.Time{}
		if err := t.Commit(); err != nil {
			t.log.Error("committing pinholes", "error", err)
		}
	}
	t.publish()
	next := t.nextExpire
	if !t.dirtySince.IsZero() && t.dirtySince.Add(t.cfg.CommitDelay).Before(next) {
		next = t.dirtySince.Add(t.cfg.CommitDelay)
	}
	return next
}

// Feed takes one packet of a capture file and runs the timers by packet
// time: expiry once a second of it, and a commit after every packet.
func (t *Tracker) Feed(data []byte, link layers.LinkType, ts time.Time) error {
	t.HandlePacket(data, link, ts)
	if ts.Sub(t.lastFeedExpire) >= time.Second {
		if !t.lastFeedExpire.IsZero() {
			t.Expire(ts)
		}
		t.lastFeedExpire = ts
	}
	return t.Commit()
}

// Snapshot returns the counters as of the latest Tick. Unlike Stats, it
// may be called from any goroutine.
func (t *Tracker) Snapshot() Stats {
	if s := t.snapshot.Load(); s != nil {
		return *s
	}
	return Stats{}
}

func (t *Tracker) publish() {
	s := t.Stats()
	t.snapshot.Store(&s)
}

// CloseAll ends every session, closing every pinhole with reason, as on
// shutdown or at the end of a capture file.
func (t *Tracker) CloseAll(reason string) {
	// What was held back for bytes that never came is delivered first.
	t.draining = true
	for _, s := range t.sessions {
		s.release(t.now)
	}
	t.draining = false
	for _, s := range t.sessions {
		t.endSession(s, closedStopping, reason)
	}
	for _, s := range t.proxied {
		t.endProxied(s, closedStopping, reason, false)
	}
	for k, p := range t.pinholes {
		t.closePinhole(k, p, closedStopping, reason)
	}
	t.forgetClosing(t.now, true)
	t.expireAdmitted(t.now, true)
}

// CommitPeers applies the queued changes of control session peers only:
// a control SYN waits for its peers, not for the pinholes queued with
// them, which keep their commit delay.
func (t *Tracker) CommitPeers() error {
	err := t.fw.CommitPeers()
	if err != nil {
		t.stats.BackendErrors++
		t.log.Error("committing control session peers", "error", err)
	}
	return err
}

// CommitNow commits what is queued, as Tick does when the commit delay
// has passed, logging a failure: for what must be in the kernel before
// ftpgate sends a line on (the control proxy).
func (t *Tracker) CommitNow() {
	t.dirtySince = time.Time{}
	if err := t.Commit(); err != nil {
		t.log.Error("committing pinholes", "error", err)
	}
}

// Commit applies the pinhole changes queued since the last Commit in one
// batch. Callers commit after each batch of packets they read.
func (t *Tracker) Commit() error {
	t.dirty = false
	err := t.fw.Commit()
	if err != nil {
		t.stats.BackendErrors++
		return err
	}
	for _, p := range t.uncommitted {
		p.committed = true
	}
	clear(t.uncommitted)
	t.uncommitted = t.uncommitted[:0]
	return nil
}
