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
	t.env.advance(now)
	t.sessions.expire(now, t.scoped)
	t.pinholes.expire(now)
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
	due, commitAt := t.fw.commitDue(now, t.env.cfg.CommitDelay)
	if due {
		if err := t.Commit(); err != nil {
			t.env.log.Error("committing pinholes", "error", err)
		}
	}
	stats := t.Stats()
	t.snapshot.Store(&stats)
	if !commitAt.IsZero() && commitAt.Before(t.nextExpire) {
		return commitAt
	}
	return t.nextExpire
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

// Commit applies the pinhole changes queued since the last Commit in one
// batch. Callers commit after each batch of packets they read.
func (t *Tracker) Commit() error { return t.fw.commit() }

// CommitNow commits what is queued, as Tick does when the commit delay
// has passed, logging a failure: for what must be in the kernel before
// ftpgate sends a line on (the control proxy).
func (t *Tracker) CommitNow() {
	if err := t.Commit(); err != nil {
		t.env.log.Error("committing pinholes", "error", err)
	}
}

// CommitPeers applies the queued changes of control session peers only:
// a control SYN waits for its peers, not for the pinholes queued with
// them, which keep their commit delay.
func (t *Tracker) CommitPeers() error { return t.fw.commitPeers() }
