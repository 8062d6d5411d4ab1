package conntrack

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/ftpgate/ftpgate/parser"
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
	// address:port they hold.
	maps   []rules.Mapping
	public netip.AddrPort
	source netip.Prefix // whose share of public ports public counts against
}

// decide asks the policy and the caps about a channel the protocol
// allows, and opens its pinhole or refuses it.
func (t *Tracker) decide(s *Session, ch Channel, announcer netip.Addr) {
	if s.nat != nil {
		t.decideNAT(s, ch)
		return
	}
	kind, why, pol, timeout := t.serverPolicy(s, ch)
	if why == "" {
		kind, why = pol.Check(ch, announcer)
	}
	if why == "" {
		kind, why = t.checkLocal(s, ch)
	}
	if why != "" {
		t.refuse(s, ch, kind, why)
		return
	}
	t.open(s, ch, ch.Pinhole(), natPlan{}, timeout)
}

// checkLocal applies the rule for announcements made from this host's
// own sockets (an FTP client or server on the gateway): the socket that
// would accept the data connection must be a listening socket of the
// user owning the announcing control connection, unless that user is
// root. Without it, any local user could hand an outside host a pinhole
// to another user's service, root's among them. A control connection of
// root's is a system FTP server's or root's own client: vsftpd accepts
// as root and listens for PASV in a session process of another user.
func (t *Tracker) checkLocal(s *Session, ch Channel) (RefusalKind, string) {
	ls := t.cfg.LocalSockets
	if ls == nil {
		return 0, ""
	}
	control, peer := s.Client, s.Server
	if ch.Passive {
		control, peer = s.Server, s.Client
	}
	if !ls.IsLocal(control.Addr()) {
		return 0, ""
	}
	owner, ok := ls.Owner(control, peer)
	if !ok {
		return refusedLocalSocket, fmt.Sprintf("announced from this host, but ftpgate found no socket of this host for the control connection %s", control)
	}
	to := netip.AddrPortFrom(ch.RespH, ch.RespP)
	listener, ok := ls.Listener(to, netip.AddrPortFrom(ch.OrigH, 0))
	switch {
	case !ok:
		return refusedLocalSocket, fmt.Sprintf("announced port %s of this host has no listening socket", to)
	case listener != owner && owner != 0:
		return refusedLocalSocket, fmt.Sprintf("announced port %s of this host is a listening socket of uid %d, not of uid %d that owns the announcing control connection", to, listener, owner)
	}
	return 0, ""
}

// decideNAT decides a passive-mode announcement (a 227, 228 or 229) on a
// session of the control proxy: the announced address must be the
// server's own on either side of its control connection's translation.
func (t *Tracker) decideNAT(s *Session, ch Channel) {
	kind, why, pol, timeout := t.serverPolicy(s, ch)
	if why == "" {
		kind, why = t.checkNAT(s, ch, pol)
	}
	if why != "" {
		t.refuse(s, ch, kind, why)
		return
	}
	code := map[parser.Verb]int{parser.VerbPASV: 227, parser.VerbEPSV: 229, parser.VerbLPSV: 228}[ch.Command]
	plan, kind, reason := t.planNAT(s, ch, code)
	if reason != "" {
		t.refuse(s, ch, kind, reason)
		return
	}
	ch = plan.describe(ch)
	if p := t.open(s, ch, plan.pinhole, plan, timeout); p != nil {
		s.nat.rewrite = plan.line
	}
}

// checkNAT is the policy check of an announcement on a proxied session.
func (t *Tracker) checkNAT(s *Session, ch Channel, pol Policy) (RefusalKind, string) {
	tr := s.nat.tr
	own := []netip.Addr{tr.Client.Addr(), tr.ClientSeen.Addr()}
	if ch.Passive {
		own = []netip.Addr{tr.Server.Addr(), tr.ServerSeen.Addr()}
	}
	return pol.Check(ch, own...)
}

// open opens the pinhole key for ch, with the NAT mappings of plan, or
// refuses ch when a cap or the backend says no.
func (t *Tracker) open(s *Session, ch Channel, key rules.Pinhole, plan natPlan, timeout time.Duration) *pinhole {
	old, replaced := t.pinholes[key]
	mine := 0 // the pinhole replaced, if it is this session's
	if replaced && old.session == s {
		mine = 1
	}
	others := 0
	if replaced {
		others = 1
	}
	// The caps are checked before the old pinhole is touched: a refusal
	// leaves it as it was, tracked.
	switch {
	case len(s.pinholes)-mine >= t.cfg.MaxPinholesPerSession:
		t.nat.release(plan.public, plan.source)
		t.refuse(s, ch, refusedCap, "session has reached its pinhole cap")
		return nil
	case len(t.pinholes)-others >= t.cfg.MaxPinholes:
		t.nat.release(plan.public, plan.source)
		t.refuse(s, ch, refusedCap, "pinhole cap reached for the whole gateway")
		return nil
	}
	if replaced {
		// The same hole again (a server reusing its passive port): it
		// now belongs to this announcement.
		t.dropFromSession(old)
		t.unmap(old)
		delete(t.pinholes, key)
	}
	t.dirty = true
	failed := func(err error, maps []rules.Mapping) *pinhole {
		t.stats.BackendErrors++
		for _, m := range maps {
			_ = t.fw.DelMapping(m)
		}
		if replaced {
			t.removeFromBackend(old) // its element must not stay behind untracked
		}
		t.nat.release(plan.public, plan.source)
		t.refuse(s, ch, refusedBackend, "firewall backend: "+err.Error())
		return nil
	}
	for i, m := range plan.maps {
		if err := t.fw.AddMapping(m, timeout); err != nil {
			return failed(err, plan.maps[:i])
		}
	}
	if err := t.fw.AddPinhole(key, timeout); err != nil {
		return failed(err, plan.maps)
	}
	_, closing := t.closing[key]
	p := &pinhole{key: key, session: s, channel: ch, expires: ch.Time.Add(timeout), fresh: !replaced && !closing,
		maps: plan.maps, public: plan.public, source: plan.source}
	t.stats.NATMappings += uint64(len(plan.maps))
	if plan.line != nil {
		t.stats.NATRewrites++
	}
	if t.now.After(ch.Time) {
		p.expires = t.now.Add(timeout)
	}
	t.pinholes[key] = p
	t.uncommitted = append(t.uncommitted, p)
	s.pinholes = append(s.pinholes, p)
	ch.Verdict = VerdictOpen
	ch.Reason = acceptReason(ch)
	t.stats.ChannelsOpened++
	t.logChannel(slog.LevelInfo, "channel open", ch)
	if t.cfg.OnChannel != nil {
		t.cfg.OnChannel(ch)
	}
	return p
}

func acceptReason(ch Channel) string {
	if ch.Passive {
		return "reply to the client's " + ch.Command.String()
	}
	return ch.Command.String() + " accepted by the server"
}

// refuse records a channel that does not open. Every refusal reaches
// OnChannel; the log lines of one session are rate-limited, since a peer
// can make them as often as it likes.
func (t *Tracker) refuse(s *Session, ch Channel, kind RefusalKind, reason string) {
	ch.Verdict = VerdictRefuse
	ch.Reason = reason
	ch.Refusal = kind
	t.stats.ChannelsRefused++
	t.stats.RefusedBy[kind]++
	if t.log.Enabled(context.Background(), slog.LevelWarn) {
		if ok, held := s.limiter.allow(logRefused, t.now); ok {
			attrs := channelAttrs(ch)
			if held > 0 {
				attrs = append(attrs, "suppressed_before", held)
			}
			t.log.Warn("channel refused", attrs...)
		}
	}
	if t.cfg.OnChannel != nil {
		t.cfg.OnChannel(ch)
	}
}

// logChannel logs ch, building its attributes only if the level is on:
// at thousands of channels a second, the address strings of lines nobody
// reads were most of the packet path's allocations.
func (t *Tracker) logChannel(level slog.Level, msg string, ch Channel) {
	if t.log.Enabled(context.Background(), level) {
		t.log.Log(context.Background(), level, msg, channelAttrs(ch)...)
	}
}

func channelAttrs(ch Channel) []any {
	attrs := []any{
		"session", ch.Session, "command", ch.Command.String(), "passive", ch.Passive,
		"orig_h", ch.OrigH.String(), "resp_h", ch.RespH.String(), "resp_p", ch.RespP,
		"reason", ch.Reason,
	}
	if ch.Sent.IsValid() {
		// What the far side of a NAT was told, and where its data
		// connection goes.
		attrs = append(attrs, "nat_h", ch.Sent.Addr().String(), "nat_p", ch.Sent.Port())
	}
	if ch.MappedTo.IsValid() {
		attrs = append(attrs, "mapped_to", ch.MappedTo.String())
	}
	if ch.Seen.IsValid() {
		attrs = append(attrs, "announcer_seen_as", ch.Seen.String())
	}
	return attrs
}

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
	t.stats.SYNsHeld++
	var seg segment
	if decode(data, LinkTypeRawIP, &seg) != decodedTCP || !seg.has(flagSYN) || seg.has(flagACK) {
		return HeldPass
	}
	key := rules.Pinhole{Peer: seg.src.Addr(), Addr: seg.dst.Addr(), Port: seg.dst.Port()}
	p, open := t.pinholes[key]
	if !open {
		if t.scopedCovers(seg.src, seg.dst) {
			// An FTPS range that opened with the copies just read, not
			// committed yet: it is not used up, so ftpgate may admit.
			t.stats.SYNsAdmitted++
			return HeldAdmit
		}
		return HeldPass
	}
	if p.fresh && t.fw.CancelAdd(key) {
		t.stats.AddsCancelled++
		delete(t.pinholes, key)
		t.dropFromSession(p)
		t.stats.SYNsAdmitted++
		t.used(p, t.now)
		return HeldAdmit
	}
	id := heldSYN{src: seg.src, dst: seg.dst, seq: seg.seq}
	if _, again := t.retried[id]; again {
		delete(t.retried, id)
		return HeldPass
	}
	if len(t.retried) >= maxRetried {
		clear(t.retried)
	}
	t.retried[id] = t.now
	if t.dirty {
		// Its element must be in the kernel when the SYN meets the
		// consume rule again.
		if err := t.Commit(); err != nil {
			t.log.Error("committing a pinhole for a held SYN", "error", err)
		}
	}
	t.stats.SYNsRetried++
	return HeldRetry
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

// PinholeConsumed records that the kernel removed p because its data
// connection started. Reports of pinholes ftpgate no longer tracks (a
// retransmitted report, or one closed meanwhile) are ignored.
func (t *Tracker) PinholeConsumed(key rules.Pinhole) {
	if p, ok := t.closing[key]; ok {
		// Closed for a session reason meanwhile, but the kernel had let
		// its connection start before the close reached it.
		delete(t.closing, key)
		t.stats.PinholesConsumed++
		t.logUsedAfterClose(p)
		return
	}
	p, ok := t.pinholes[key]
	if !ok {
		return
	}
	delete(t.pinholes, key)
	t.dropFromSession(p)
	t.unmap(p) // the connection has its NAT binding: the mapping is done
	t.used(p, t.now)
}

// used records that p's data connection started: the kernel used the
// pinhole, or ftpgate admitted a held SYN with it. Where the admin's
// ruleset confirms what it let through (Config.ConfirmAdmitted), the
// close waits for that report, or for ConfirmWait.
func (t *Tracker) used(p *pinhole, at time.Time) {
	t.stats.PinholesConsumed++
	if !t.cfg.ConfirmAdmitted {
		t.logClosed(slog.LevelInfo, p, closedUsed, "data connection started", at)
		return
	}
	if old, ok := t.admitted[p.key]; ok {
		t.confirmed(old) // the same hole again: the first one got through, or nothing would follow
	}
	p.usedAt, p.confirmBy = at, t.now.Add(t.cfg.ConfirmWait)
	t.admitted[p.key] = p
}

// AdmittedReport takes the kernel's report, from after the admin's
// filter chains, of a data connection with ftpgate's mark (its first
// packet's headers): the ruleset let it through.
func (t *Tracker) AdmittedReport(data []byte) {
	key, ok := synKey(data)
	if !ok {
		return
	}
	if p, ok := t.admitted[key]; ok {
		t.confirmed(p)
	}
}

func (t *Tracker) confirmed(p *pinhole) {
	delete(t.admitted, p.key)
	t.stats.DataAdmitted++
	t.logClosed(slog.LevelInfo, p, closedUsed, "data connection started", p.usedAt)
}

// expireAdmitted closes, as dropped, the used pinholes whose connection
// the admin's ruleset has not let through within ConfirmWait.
func (t *Tracker) expireAdmitted(now time.Time, all bool) {
	for k, p := range t.admitted {
		if !all && now.Before(p.confirmBy) {
			continue
		}
		delete(t.admitted, k)
		if all && now.Before(p.confirmBy) {
			t.logClosed(slog.LevelInfo, p, closedUsed, "data connection started (not yet seen past the ruleset when ftpgate stopped)", p.usedAt)
			continue
		}
		t.stats.AdmittedDropped++
		t.logClosed(slog.LevelWarn, p, closedDroppedByRuleset, "admitted but dropped by the ruleset", p.usedAt)
		t.warnCap(3, "a data connection ftpgate admitted was dropped by your ruleset: is the accept line for ftpgate's ct mark in the chain, before its drop? (ftpgate run logs the line at start-up)",
			"dropped_so_far", t.stats.AdmittedDropped)
	}
}

// closeSessionPinholes closes every open pinhole of s.
func (t *Tracker) closeSessionPinholes(s *Session, kind CloseKind, reason string) {
	for len(s.pinholes) > 0 {
		p := s.pinholes[0]
		t.closePinhole(p.key, p, kind, reason)
	}
}

func (t *Tracker) closePinhole(key rules.Pinhole, p *pinhole, kind CloseKind, reason string) {
	if cur, ok := t.pinholes[key]; ok && cur == p {
		delete(t.pinholes, key)
		t.removeFromBackend(p)
	}
	t.dropFromSession(p)
	t.stats.PinholesClosed++
	at := t.now
	if kind == closedTimeout {
		at = p.expires
	}
	t.logClosed(slog.LevelInfo, p, kind, reason, at)
	if t.cfg.ReportWindow > 0 {
		// The kernel may have used it before the close reached it; its
		// report is still on the way.
		p.logBy = t.now.Add(t.cfg.ReportWindow)
		t.closing[key] = p
	}
}

// removeFromBackend takes p's element out of the kernel: an add still
// waiting for its commit is cancelled, so the kernel never sees it;
// anything else is deleted at the next Commit.
func (t *Tracker) removeFromBackend(p *pinhole) {
	t.unmap(p)
	if p.fresh && t.fw.CancelAdd(p.key) {
		t.stats.AddsCancelled++
		return
	}
	t.dirty = true
	if err := t.fw.DelPinhole(p.key); err != nil {
		t.stats.BackendErrors++
		t.log.Error("closing pinhole", "pinhole", p.key.String(), "error", err)
	}
}

// unmap removes p's NAT mappings and frees its public port.
func (t *Tracker) unmap(p *pinhole) {
	for _, m := range p.maps {
		t.dirty = true
		if err := t.fw.DelMapping(m); err != nil {
			t.stats.BackendErrors++
			t.log.Error("removing NAT mapping", "mapping", m.String(), "error", err)
		}
	}
	p.maps = nil
	if p.public.IsValid() {
		t.nat.release(p.public, p.source)
		p.public = netip.AddrPort{}
	}
}

// logClosed logs a close when it happens; at is when it did (the
// kernel's use, or the timeout), which may be a little earlier.
func (t *Tracker) logClosed(level slog.Level, p *pinhole, kind CloseKind, reason string, at time.Time) {
	t.stats.ClosedBy[kind]++
	t.observeClosed(p, kind, reason, at)
	if !t.log.Enabled(context.Background(), level) {
		return
	}
	t.log.Log(context.Background(), level, "channel closed", "session", p.channel.Session, "command", p.channel.Command.String(),
		"orig_h", p.key.Peer.String(), "resp_h", p.key.Addr.String(), "resp_p", p.key.Port, "reason", reason,
		"at", at.UTC().Format(time.RFC3339Nano))
}

func (t *Tracker) logUsedAfterClose(p *pinhole) {
	t.observeClosed(p, closedUsed, reasonUsedAfterClose, t.now)
	if t.log.Enabled(context.Background(), slog.LevelInfo) {
		t.log.Info("channel used", "session", p.channel.Session, "command", p.channel.Command.String(),
			"orig_h", p.key.Peer.String(), "resp_h", p.key.Addr.String(), "resp_p", p.key.Port,
			"reason", reasonUsedAfterClose, "at", t.now.UTC().Format(time.RFC3339Nano))
	}
}

// forgetClosing stops waiting for late reports of closed pinholes.
func (t *Tracker) forgetClosing(now time.Time, all bool) {
	for k, p := range t.closing {
		if all || !now.Before(p.logBy) {
			delete(t.closing, k)
		}
	}
}

func (t *Tracker) dropFromSession(p *pinhole) {
	s := p.session
	if i := slices.Index(s.pinholes, p); i >= 0 {
		s.pinholes = slices.Delete(s.pinholes, i, i+1)
	}
}
