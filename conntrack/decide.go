package conntrack

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/ftpgate/ftpgate/nat"
)

// decider takes each channel the protocol allows and decides it: the
// server's policy, the announcer's address, this host's own sockets, and
// for a session of the control proxy the NAT plan; then the pinhole table
// opens it, or the channel is refused. Every verdict is logged and told to
// the observer.
type decider struct {
	env      *env
	pinholes *pinholeTable
	ports    *nat.Ports
}

// decide asks the policy and the caps about a channel the protocol
// allows, and opens its pinhole or refuses it.
func (c *decider) decide(s *Session, ch Channel, announcer netip.Addr) {
	if s.nat != nil {
		c.decideNAT(s, ch)
		return
	}
	kind, why, pol, timeout := serverPolicy(&c.env.cfg, s, ch)
	if why == "" {
		kind, why = pol.Check(ch, announcer)
	}
	if why == "" {
		kind, why = checkLocal(c.env.cfg.LocalSockets, s, ch)
	}
	if why != "" {
		c.refuse(s, ch, kind, why)
		return
	}
	c.open(s, ch, natPlan{pinhole: ch.Pinhole()}, timeout)
}

// checkLocal applies the rule for announcements made from this host's
// own sockets (an FTP client or server on the gateway): the socket that
// would accept the data connection must be a listening socket of the
// user owning the announcing control connection, unless that user is
// root. Without it, any local user could hand an outside host a pinhole
// to another user's service, root's among them. A control connection of
// root's is a system FTP server's or root's own client: vsftpd accepts
// as root and listens for PASV in a session process of another user.
func checkLocal(ls LocalSockets, s *Session, ch Channel) (RefusalKind, string) {
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
func (c *decider) decideNAT(s *Session, ch Channel) {
	kind, why, pol, timeout := serverPolicy(&c.env.cfg, s, ch)
	if why == "" {
		kind, why = checkNAT(s, ch, pol)
	}
	if why != "" {
		c.refuse(s, ch, kind, why)
		return
	}
	plan, kind, why := c.planNAT(s, ch)
	if why != "" {
		c.refuse(s, ch, kind, why)
		return
	}
	if c.open(s, plan.describe(ch), plan, timeout) {
		s.nat.rewrite = plan.line
	}
}

// planNAT plans an announcement of a translated session, unless its line
// cannot be rewritten where it is (see natSession.splitLine).
func (c *decider) planNAT(s *Session, ch Channel) (natPlan, RefusalKind, string) {
	if why := s.nat.splitLine(); why != "" {
		return natPlan{}, refusedNAT, why
	}
	return planNAT(c.ports, s.nat.tr, ch)
}

// checkNAT is the policy check of an announcement on a proxied session.
func checkNAT(s *Session, ch Channel, pol Policy) (RefusalKind, string) {
	tr := s.nat.tr
	own := []netip.Addr{tr.Client.Addr(), tr.ClientSeen.Addr()}
	if ch.Passive {
		own = []netip.Addr{tr.Server.Addr(), tr.ServerSeen.Addr()}
	}
	return pol.Check(ch, own...)
}

// planActive plans an active-mode announcement of a proxied session, as
// the client sends it: the line the server gets is rewritten now, with a
// public port held for it, but nothing reaches the kernel before the
// server has accepted the command (plannedReply). Until then the far
// side has nothing to connect to.
func (c *decider) planActive(s *Session, ch Channel) *natPlan {
	kind, why, pol, timeout := serverPolicy(&c.env.cfg, s, ch)
	if why == "" {
		kind, why = checkNAT(s, ch, pol)
	}
	if why == "" && s.pair.distrusted != "" {
		kind, why = refusedActiveDistrusted, "active mode refused on this session: "+s.pair.distrusted
	}
	if why != "" {
		c.refuse(s, ch, kind, why)
		return nil
	}
	plan, kind, why := c.planNAT(s, ch)
	if why != "" {
		c.refuse(s, ch, kind, why)
		return nil
	}
	plan.channel, plan.timeout = plan.describe(ch), timeout
	s.nat.rewrite = plan.line
	return &plan
}

// plannedReply opens, or gives up, a planned active-mode announcement
// when the server answers it. What it opens is committed before the
// reply goes on to the client, which only then sends the command that
// makes the server connect.
func (c *decider) plannedReply(s *Session, cmd pendingCommand, code int) {
	plan := cmd.plan
	switch {
	case code >= 300:
		c.dropPlanned(s, cmd, refusedByServer, fmt.Sprintf("server refused %s with %d", cmd.verb, code))
	case s.pair.distrusted != "":
		c.dropPlanned(s, cmd, refusedActiveDistrusted, "active mode refused on this session: "+s.pair.distrusted)
	default:
		// The configuration may have changed since the line went on.
		if why := disallows(&c.env.cfg, s, plan.channel); why != "" {
			c.dropPlanned(s, cmd, refusedNotServed, "the reloaded configuration no longer allows it: "+why)
			return
		}
		c.open(s, plan.channel, *plan, plan.timeout)
	}
}

// dropPlanned refuses a planned announcement and gives its port back.
func (c *decider) dropPlanned(s *Session, cmd pendingCommand, kind RefusalKind, reason string) {
	c.ports.Release(cmd.plan.public, cmd.plan.source)
	c.refuse(s, cmd.plan.channel, kind, reason)
}

// open opens the pinhole of plan for ch, or refuses ch when a cap or the
// backend says no; it reports whether it opened.
func (c *decider) open(s *Session, ch Channel, plan natPlan, timeout time.Duration) bool {
	if _, kind, why := c.pinholes.add(s, ch, plan.pinhole, plan, timeout); why != "" {
		c.ports.Release(plan.public, plan.source)
		c.refuse(s, ch, kind, why)
		return false
	}
	if plan.line != nil {
		c.env.stats.NATRewrites++
	}
	ch.Verdict = VerdictOpen
	ch.Reason = acceptReason(ch)
	c.env.stats.ChannelsOpened++
	if c.env.log.Enabled(context.Background(), slog.LevelInfo) {
		c.env.log.Info("channel open", channelAttrs(ch)...)
	}
	c.env.obs.Channel(ch)
	return true
}

func acceptReason(ch Channel) string {
	if ch.Passive {
		return "reply to the client's " + ch.Command.String()
	}
	return ch.Command.String() + " accepted by the server"
}

// refuse records a channel that does not open. Every refusal reaches
// the observer; the log lines of one session are rate-limited, since a
// peer can make them as often as it likes.
func (c *decider) refuse(s *Session, ch Channel, kind RefusalKind, reason string) {
	ch.Verdict = VerdictRefuse
	ch.Reason = reason
	ch.Refusal = kind
	c.env.stats.ChannelsRefused++
	c.env.stats.RefusedBy[kind]++
	if c.env.log.Enabled(context.Background(), slog.LevelWarn) {
		if ok, held := s.limiter.allow(logRefused, c.env.now); ok {
			attrs := channelAttrs(ch)
			if held > 0 {
				attrs = append(attrs, "suppressed_before", held)
			}
			c.env.log.Warn("channel refused", attrs...)
		}
	}
	c.env.obs.Channel(ch)
}

// channelAttrs are the log attributes of a channel. Callers build them
// only if the level is on: at thousands of channels a second, the
// address strings of lines nobody reads were most of the packet path's
// allocations.
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
