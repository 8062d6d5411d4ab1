package conntrack

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/ftpgate/ftpgate/nat"
	"github.com/ftpgate/ftpgate/rules"
)

// pinhole is an open pinhole and the session that asked for it.
type pinhole struct {
	key     rules.Pinhole
	session *Session
	channel Channel
	expires time.Time
	// fresh: no element of this key was in the kernel when it opened,
	// so an add not yet committed can simply be cancelled.
	fresh bool
	// Set once closed: until when a late report of its use counts.
	logBy time.Time
	// committed: its add has reached the kernel.
	committed bool
	// Used, waiting for the ruleset's confirmation (see used).
	usedAt, confirmBy time.Time
	// NAT: the mappings of its data connection, and the public
	// address:port they hold (in nat.Ports, against source's share).
	maps   []rules.Mapping
	public netip.AddrPort
	source netip.Prefix
}

// pinholeTable is the life of every pinhole: open, then used (by the
// kernel, or by a held SYN ftpgate admits), confirmed past the admin's
// ruleset, closed or timed out, and remembered a little after its close
// for a late report of its use.
type pinholeTable struct {
	env *env
	fw  *firewall
	nat *nat.Ports // frees the public ports of mappings
	// open, by key; closing: closed, a late report of their use may
	// come; admitted: used, waiting for the ruleset's confirmation.
	open, closing, admitted map[rules.Pinhole]*pinhole
	// retried: held data SYNs sent back to the kernel once.
	retried map[heldSYN]time.Time
}

func newPinholeTable(e *env, fw *firewall, ports *nat.Ports) *pinholeTable {
	return &pinholeTable{env: e, fw: fw, nat: ports,
		open: map[rules.Pinhole]*pinhole{}, closing: map[rules.Pinhole]*pinhole{}, admitted: map[rules.Pinhole]*pinhole{},
		retried: map[heldSYN]time.Time{}}
}

// heldSYN names a data SYN sent back to the kernel once.
type heldSYN struct {
	src, dst netip.AddrPort
	seq      uint32
}

// maxRetried bounds the SYNs remembered as retried; they are forgotten
// after retriedFor.
const (
	maxRetried = 4096
	retriedFor = 3 * time.Second
)

// add opens the pinhole key of session s for ch, with the NAT mappings
// of plan, or says why not (a cap, the backend). A refusal leaves a
// pinhole of the same key as it was, except when the backend failed:
// its element then cannot stay behind untracked.
func (t *pinholeTable) add(s *Session, ch Channel, key rules.Pinhole, plan natPlan, timeout time.Duration) (*pinhole, RefusalKind, string) {
	old, replaced := t.open[key]
	mine := 0 // the pinhole replaced, if it is this session's
	if replaced && old.session == s {
		mine = 1
	}
	others := 0
	if replaced {
		others = 1
	}
	switch {
	case len(s.pinholes)-mine >= t.env.cfg.MaxPinholesPerSession:
		return nil, refusedCap, "session has reached its pinhole cap"
	case len(t.open)-others >= t.env.cfg.MaxPinholes:
		return nil, refusedCap, "pinhole cap reached for the whole gateway"
	}
	if replaced {
		// The same hole again (a server reusing its passive port): it
		// now belongs to this announcement.
		t.dropFromSession(old)
		t.unmap(old)
		delete(t.open, key)
	}
	_, closing := t.closing[key]
	p := &pinhole{key: key, session: s, channel: ch, expires: ch.Time.Add(timeout), fresh: !replaced && !closing,
		maps: plan.maps, public: plan.public, source: plan.source}
	if t.env.now.After(ch.Time) {
		p.expires = t.env.now.Add(timeout)
	}
	if why := t.addToBackend(p, timeout); why != "" {
		if replaced {
			t.fw.delPinhole(old)
		}
		return nil, refusedBackend, why
	}
	t.env.stats.NATMappings += uint64(len(plan.maps))
	t.open[key] = p
	s.pinholes = append(s.pinholes, p)
	return p, 0, ""
}

// addToBackend queues p's mappings and element; on an error, what it
// queued is taken back.
func (t *pinholeTable) addToBackend(p *pinhole, timeout time.Duration) string {
	for i, m := range p.maps {
		if err := t.fw.addMapping(m, timeout); err != nil {
			for _, m := range p.maps[:i] {
				t.fw.delMapping(m)
			}
			return "firewall backend: " + err.Error()
		}
	}
	if err := t.fw.addPinhole(p, timeout); err != nil {
		for _, m := range p.maps {
			t.fw.delMapping(m)
		}
		return "firewall backend: " + err.Error()
	}
	return ""
}

// admitHeld decides on a held data SYN from src to dst whose pinhole
// (key) may be open (see Tracker.AdmitHeldSYN).
func (t *pinholeTable) admitHeld(key rules.Pinhole, id heldSYN) HeldVerdict {
	p, open := t.open[key]
	if !open {
		return HeldPass
	}
	if p.fresh && t.fw.cancelAdd(key) {
		delete(t.open, key)
		t.dropFromSession(p)
		t.env.stats.SYNsAdmitted++
		t.used(p, t.env.now)
		return HeldAdmit
	}
	if _, again := t.retried[id]; again {
		delete(t.retried, id)
		return HeldPass
	}
	if len(t.retried) >= maxRetried {
		clear(t.retried)
	}
	t.retried[id] = t.env.now
	t.env.stats.SYNsRetried++
	return HeldRetry
}

// consumed records that the kernel removed key's pinhole because its
// data connection started. Reports of pinholes ftpgate no longer tracks
// (a retransmitted report, or one closed meanwhile) are ignored.
func (t *pinholeTable) consumed(key rules.Pinhole) {
	if p, ok := t.closing[key]; ok {
		// Closed for a session reason meanwhile, but the kernel had let
		// its connection start before the close reached it.
		delete(t.closing, key)
		t.env.stats.PinholesConsumed++
		t.logUsedAfterClose(p)
		return
	}
	p, ok := t.open[key]
	if !ok {
		return
	}
	delete(t.open, key)
	t.dropFromSession(p)
	t.unmap(p) // the connection has its NAT binding: the mapping is done
	t.used(p, t.env.now)
}

// used records that p's data connection started: the kernel used the
// pinhole, or ftpgate admitted a held SYN with it. Where the admin's
// ruleset confirms what it let through (Config.ConfirmAdmitted), the
// close waits for that report, or for ConfirmWait.
func (t *pinholeTable) used(p *pinhole, at time.Time) {
	t.env.stats.PinholesConsumed++
	if !t.env.cfg.ConfirmAdmitted {
		t.logClosed(slog.LevelInfo, p, closedUsed, "data connection started", at)
		return
	}
	if old, ok := t.admitted[p.key]; ok {
		t.confirmed(old) // the same hole again: the first one got through, or nothing would follow
	}
	p.usedAt, p.confirmBy = at, t.env.now.Add(t.env.cfg.ConfirmWait)
	t.admitted[p.key] = p
}

// confirm takes the kernel's report that the admin's ruleset let key's
// data connection through.
func (t *pinholeTable) confirm(key rules.Pinhole) {
	if p, ok := t.admitted[key]; ok {
		t.confirmed(p)
	}
}

func (t *pinholeTable) confirmed(p *pinhole) {
	delete(t.admitted, p.key)
	t.env.stats.DataAdmitted++
	t.logClosed(slog.LevelInfo, p, closedUsed, "data connection started", p.usedAt)
}

// expireAdmitted closes, as dropped, the used pinholes whose connection
// the admin's ruleset has not let through within ConfirmWait; all closes
// every one (ftpgate stops).
func (t *pinholeTable) expireAdmitted(now time.Time, all bool) {
	for k, p := range t.admitted {
		if !all && now.Before(p.confirmBy) {
			continue
		}
		delete(t.admitted, k)
		if all && now.Before(p.confirmBy) {
			t.logClosed(slog.LevelInfo, p, closedUsed, "data connection started (not yet seen past the ruleset when ftpgate stopped)", p.usedAt)
			continue
		}
		t.env.stats.AdmittedDropped++
		t.logClosed(slog.LevelWarn, p, closedDroppedByRuleset, "admitted but dropped by the ruleset", p.usedAt)
		t.env.warnCap(capWarnDropped, "a data connection ftpgate admitted was dropped by your ruleset: is the accept line for ftpgate's ct mark in the chain, before its drop? (ftpgate run logs the line at start-up)",
			"dropped_so_far", t.env.stats.AdmittedDropped)
	}
}

// expire closes the pinholes whose kernel timeout has passed and forgets
// what has waited long enough.
func (t *pinholeTable) expire(now time.Time) {
	for k, at := range t.retried {
		if now.Sub(at) >= retriedFor {
			delete(t.retried, k)
		}
	}
	for _, p := range t.open {
		if !now.Before(p.expires) {
			t.close(p, closedTimeout, "timeout")
		}
	}
	t.forgetClosing(now, false)
	t.expireAdmitted(now, false)
}

// closeAll closes every pinhole, as ftpgate stops.
func (t *pinholeTable) closeAll(reason string) {
	for _, p := range t.open {
		t.close(p, closedStopping, reason)
	}
	t.forgetClosing(t.env.now, true)
	t.expireAdmitted(t.env.now, true)
}

// closeSessionPinholes closes every open pinhole of s.
func (t *pinholeTable) closeSessionPinholes(s *Session, kind CloseKind, reason string) {
	for len(s.pinholes) > 0 {
		t.close(s.pinholes[0], kind, reason)
	}
}

func (t *pinholeTable) close(p *pinhole, kind CloseKind, reason string) {
	if cur, ok := t.open[p.key]; ok && cur == p {
		delete(t.open, p.key)
		t.unmap(p)
		t.fw.delPinhole(p)
	}
	t.dropFromSession(p)
	t.env.stats.PinholesClosed++
	at := t.env.now
	if kind == closedTimeout {
		at = p.expires
	}
	t.logClosed(slog.LevelInfo, p, kind, reason, at)
	if t.env.cfg.ReportWindow > 0 {
		// The kernel may have used it before the close reached it; its
		// report is still on the way.
		p.logBy = t.env.now.Add(t.env.cfg.ReportWindow)
		t.closing[p.key] = p
	}
}

// unmap removes p's NAT mappings and frees its public port.
func (t *pinholeTable) unmap(p *pinhole) {
	for _, m := range p.maps {
		t.fw.delMapping(m)
	}
	p.maps = nil
	if p.public.IsValid() {
		t.nat.Release(p.public, p.source)
		p.public = netip.AddrPort{}
	}
}

// logClosed logs a close when it happens; at is when it did (the
// kernel's use, or the timeout), which may be a little earlier.
func (t *pinholeTable) logClosed(level slog.Level, p *pinhole, kind CloseKind, reason string, at time.Time) {
	t.env.stats.ClosedBy[kind]++
	t.env.obs.ChannelClosed(ChannelClosed{Channel: p.channel, At: at, Kind: kind, Reason: reason, Started: kind == closedUsed})
	if !t.env.log.Enabled(context.Background(), level) {
		return
	}
	t.env.log.Log(context.Background(), level, "channel closed", "session", p.channel.Session, "command", p.channel.Command.String(),
		"orig_h", p.key.Peer.String(), "resp_h", p.key.Addr.String(), "resp_p", p.key.Port, "reason", reason,
		"at", at.UTC().Format(time.RFC3339Nano))
}

const reasonUsedAfterClose = "its data connection had started before ftpgate closed it"

func (t *pinholeTable) logUsedAfterClose(p *pinhole) {
	now := t.env.now
	t.env.obs.ChannelClosed(ChannelClosed{Channel: p.channel, At: now, Kind: closedUsed, Reason: reasonUsedAfterClose, Started: true})
	if t.env.log.Enabled(context.Background(), slog.LevelInfo) {
		t.env.log.Info("channel used", "session", p.channel.Session, "command", p.channel.Command.String(),
			"orig_h", p.key.Peer.String(), "resp_h", p.key.Addr.String(), "resp_p", p.key.Port,
			"reason", reasonUsedAfterClose, "at", now.UTC().Format(time.RFC3339Nano))
	}
}

// forgetClosing stops waiting for late reports of closed pinholes.
func (t *pinholeTable) forgetClosing(now time.Time, all bool) {
	for k, p := range t.closing {
		if all || !now.Before(p.logBy) {
			delete(t.closing, k)
		}
	}
}

func (t *pinholeTable) dropFromSession(p *pinhole) {
	s := p.session
	if i := slices.Index(s.pinholes, p); i >= 0 {
		s.pinholes = slices.Delete(s.pinholes, i, i+1)
	}
}

// consumeOnSYN uses the pinhole a data SYN matches, where no kernel
// does (Config.ConsumeOnSYN).
func (t *pinholeTable) consumeOnSYN(seg *segment) {
	if !seg.has(flagSYN) || seg.has(flagACK) {
		return
	}
	key := rules.Pinhole{Peer: seg.src.Addr(), Addr: seg.dst.Addr(), Port: seg.dst.Port()}
	_, open := t.open[key]
	if open {
		t.consumed(key)
	}
	t.env.obs.DataSYN(DataSYN{Time: t.env.now, From: seg.src, To: seg.dst, Admitted: open})
}
