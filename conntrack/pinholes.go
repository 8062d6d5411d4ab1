package conntrack

import "github.com/ftpgate/ftpgate/rules"

// HeldVerdict is what becomes of a data SYN the kernel held because it
// found no pinhole (see AdmitHeldSYN).
type HeldVerdict uint8

const (
	// HeldPass lets the SYN go on to the admin's rules, which drop it.
	HeldPass HeldVerdict = iota
	// HeldAdmit sends it through ftpgate's chain again with the mark:
	// ftpgate used up its pinhole, which never reached the kernel.
	HeldAdmit
	// HeldRetry sends it through ftpgate's chain again without the
	// mark: its pinhole is in the kernel, whose consume rule alone may
	// use it up, so that two SYNs racing on two CPUs cannot both pass.
	HeldRetry
)

// AdmitHeldSYN decides on a data SYN (a raw IP packet) that the kernel
// held because it found no pinhole. Call it after the copies logged
// before the SYN have been handled.
//
// A pinhole that was never committed is used up here, exactly once,
// since only this goroutine decides on it: it is closed, its add is
// cancelled, and it is logged as used. A pinhole that is in the kernel,
// or about to be, belongs to the kernel's atomic consume rule: the SYN is
// retried there once, and if it comes back, the kernel had no pinhole
// left for it.
func (t *Tracker) AdmitHeldSYN(data []byte) HeldVerdict {
	t.env.stats.SYNsHeld++
	var seg segment
	if decode(data, rawIP, &seg) != decodedTCP || !seg.has(flagSYN) || seg.has(flagACK) {
		return HeldPass
	}
	key := rules.Pinhole{Peer: seg.src.Addr(), Addr: seg.dst.Addr(), Port: seg.dst.Port()}
	if _, open := t.pinholes.open[key]; !open {
		if t.scoped.covers(seg.src, seg.dst) {
			// An FTPS range that opened with the copies just read, not
			// committed yet: it is not used up, so ftpgate may admit.
			t.env.stats.SYNsAdmitted++
			return HeldAdmit
		}
		return HeldPass
	}
	v := t.pinholes.admitHeld(key, heldSYN{src: seg.src, dst: seg.dst, seq: seg.seq})
	if v == HeldRetry && t.fw.dirty {
		// Its element must be in the kernel when the SYN meets the
		// consume rule again.
		if err := t.Commit(); err != nil {
			t.env.log.Error("committing a pinhole for a held SYN", "error", err)
		}
	}
	return v
}

// PinholeConsumed records that the kernel removed p because its data
// connection started. Reports of pinholes ftpgate no longer tracks (a
// retransmitted report, or one closed meanwhile) are ignored.
func (t *Tracker) PinholeConsumed(key rules.Pinhole) { t.pinholes.consumed(key) }

// UsedReport takes the kernel's report of the first packet of a data
// connection that used a pinhole (its headers; the rest may be cut off).
func (t *Tracker) UsedReport(data []byte) {
	if key, ok := synKey(data); ok {
		t.pinholes.consumed(key)
	}
}

// AdmittedReport takes the kernel's report, from after the admin's
// filter chains, of a data connection with ftpgate's mark (its first
// packet's headers): the ruleset let it through.
func (t *Tracker) AdmittedReport(data []byte) {
	if key, ok := synKey(data); ok {
		t.pinholes.confirm(key)
	}
}
