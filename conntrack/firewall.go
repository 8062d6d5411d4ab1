package conntrack

import (
	"time"

	"github.com/ftpgate/ftpgate/rules"
)

// firewall is the tracker's side of its rules.Backend. Every change goes
// through it, so that it knows what is queued and when the queue must
// reach the kernel (the commit delay, or at once), and a backend that
// fails is counted and logged in one place.
type firewall struct {
	backend rules.Backend
	env     *env
	// dirty: changes queued since the last commit; since when, and
	// whether they must not wait for the commit delay (a scoped range:
	// a held SYN cannot be admitted from one that is not in the kernel).
	dirty, urgent bool
	dirtySince    time.Time
	// uncommitted: pinholes added since the last commit, marked
	// committed by the next.
	uncommitted []*pinhole
}

// failed counts and logs an error of the backend; it reports whether
// there was one.
func (f *firewall) failed(err error, doing string, attrs ...any) bool {
	if err == nil {
		return false
	}
	f.env.stats.BackendErrors++
	f.env.log.Error(doing, append(attrs, "error", err)...)
	return true
}

// queued notes that a change is queued for the next commit.
func (f *firewall) queued() { f.dirty = true }

// queuedUrgent notes a change that must reach the kernel at the next
// Tick, whatever the commit delay.
func (f *firewall) queuedUrgent() { f.dirty, f.urgent = true, true }

// addPinhole queues a pinhole element. An error is counted; the caller
// refuses the channel, which logs it.
func (f *firewall) addPinhole(p *pinhole, timeout time.Duration) error {
	f.queued()
	if err := f.backend.AddPinhole(p.key, timeout); err != nil {
		f.env.stats.BackendErrors++
		return err
	}
	f.uncommitted = append(f.uncommitted, p)
	return nil
}

// addMapping queues a NAT mapping, like addPinhole.
func (f *firewall) addMapping(m rules.Mapping, timeout time.Duration) error {
	f.queued()
	if err := f.backend.AddMapping(m, timeout); err != nil {
		f.env.stats.BackendErrors++
		return err
	}
	return nil
}

// delPinhole takes p's element out of the kernel: an add still waiting
// for its commit is cancelled, so the kernel never sees it; anything
// else is deleted at the next commit.
func (f *firewall) delPinhole(p *pinhole) {
	if p.fresh && f.cancelAdd(p.key) {
		return
	}
	f.queued()
	// The key is formatted only for an error: this runs for every pinhole.
	if err := f.backend.DelPinhole(p.key); err != nil {
		f.failed(err, "closing pinhole", "pinhole", p.key.String())
	}
}

// cancelAdd takes back the add of a pinhole not yet committed, if it is
// still queued.
func (f *firewall) cancelAdd(key rules.Pinhole) bool {
	if !f.backend.CancelAdd(key) {
		return false
	}
	f.env.stats.AddsCancelled++
	return true
}

func (f *firewall) delMapping(m rules.Mapping) {
	f.queued()
	if err := f.backend.DelMapping(m); err != nil {
		f.failed(err, "removing NAT mapping", "mapping", m.String())
	}
}

// commitDue says whether the queue must be committed at now, given the
// commit delay, and when it will be due if not.
func (f *firewall) commitDue(now time.Time, delay time.Duration) (due bool, next time.Time) {
	switch {
	case !f.dirty:
		f.dirtySince = time.Time{}
	case f.urgent:
		f.dirtySince = now.Add(-delay)
	case f.dirtySince.IsZero():
		f.dirtySince = now
	}
	f.urgent = false
	if f.dirtySince.IsZero() {
		return false, time.Time{}
	}
	if !now.Before(f.dirtySince.Add(delay)) {
		return true, time.Time{}
	}
	return false, f.dirtySince.Add(delay)
}

// commit sends the queue to the kernel in one batch.
func (f *firewall) commit() error {
	f.dirty = false
	f.dirtySince = time.Time{}
	if err := f.backend.Commit(); err != nil {
		f.env.stats.BackendErrors++
		return err
	}
	for _, p := range f.uncommitted {
		p.committed = true
	}
	clear(f.uncommitted)
	f.uncommitted = f.uncommitted[:0]
	return nil
}

// commitPeers sends only the control session peers queued (see
// Tracker.CommitPeers).
func (f *firewall) commitPeers() error {
	err := f.backend.CommitPeers()
	f.failed(err, "committing control session peers")
	return err
}
