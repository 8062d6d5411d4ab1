package conntrack

import (
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// ServerPolicy scopes ftpgate to some FTP servers and gives each its
// own policy. With no ServerPolicy in Config.Servers, every server is
// served under the global settings.
type ServerPolicy struct {
	// Prefix holds the server addresses (a single address is a /32 or
	// /128), Ports their control ports (empty: any of Config.ControlPorts).
	Prefix netip.Prefix
	Ports  []uint16
	// MinDataPort and PinholeTimeout override the global values when set.
	MinDataPort    uint16
	PinholeTimeout time.Duration
	// NoActive refuses active mode (PORT, EPRT, LPRT) to these servers.
	NoActive bool
}

func (sp ServerPolicy) String() string {
	s := sp.Prefix.String()
	if len(sp.Ports) > 0 {
		s += fmt.Sprintf(" ports %v", sp.Ports)
	}
	return s
}

// serverFor returns the policy of the server a session talks to, and
// whether ftpgate serves it at all. The first matching entry wins.
func (t *Tracker) serverFor(server netip.AddrPort) (*ServerPolicy, bool) {
	if len(t.cfg.Servers) == 0 {
		return nil, true
	}
	for i := range t.cfg.Servers {
		sp := &t.cfg.Servers[i]
		if sp.Prefix.Contains(server.Addr()) && (len(sp.Ports) == 0 || slices.Contains(sp.Ports, server.Port())) {
			return sp, true
		}
	}
	return nil, false
}

// serverPolicy applies the server's policy to an announcement: it returns
// why the server refuses it (or ""), the policy to check it with, and the
// pinhole timeout.
func (t *Tracker) serverPolicy(s *Session, ch Channel) (RefusalKind, string, Policy, time.Duration) {
	pol, timeout := t.policy, t.cfg.PinholeTimeout
	sp, served := t.serverFor(s.Server)
	switch {
	case !served:
		return refusedNotServed, fmt.Sprintf("server %s is not one ftpgate serves (see the [[server]] entries of its configuration)", s.Server), pol, timeout
	case sp == nil:
		return 0, "", pol, timeout
	case sp.NoActive && !ch.Passive:
		return refusedNotServed, fmt.Sprintf("active mode is not allowed to server %s (its [[server]] entry %s)", s.Server, sp), pol, timeout
	}
	if sp.MinDataPort != 0 {
		pol.MinDataPort = sp.MinDataPort
	}
	if sp.PinholeTimeout != 0 {
		timeout = sp.PinholeTimeout
	}
	return 0, "", pol, timeout
}

// Reconfigurable is what a running tracker takes from a reloaded
// configuration. Caps and the capture are fixed at start.
type Reconfigurable struct {
	MinDataPort           uint16
	PinholeTimeout        time.Duration
	IdleTimeout           time.Duration
	HandshakeTimeout      time.Duration
	MaxPinholesPerSession int
	Servers               []ServerPolicy
	ControlPorts          []uint16 // the implicit FTPS ports among them
	ImplicitPorts         []uint16
	FTPSRanges            []FTPSRange
	ActiveRanges          []ActiveRange
}

// ControlPorts are the control ports the tracker watches now.
func (t *Tracker) ControlPorts() []uint16 { return t.cfg.ControlPorts }

// Reconfigured says what a reload took away from live sessions.
type Reconfigured struct {
	SessionsEnded, PinholesClosed, RangesClosed int
}

// Reconfigure applies a reloaded configuration: to announcements from
// now on, and at once to what is open. A pinhole or scoped range the new
// configuration would not give (a server no longer served or no longer
// allowed active mode, a range removed or changed, a minimum data port
// raised) closes now; a session on a control port no longer configured
// ends. Pinholes that stay keep their timeout.
func (t *Tracker) Reconfigure(r Reconfigurable) Reconfigured {
	t.cfg.MinDataPort = r.MinDataPort
	t.policy.MinDataPort = r.MinDataPort
	t.cfg.PinholeTimeout = r.PinholeTimeout
	t.cfg.IdleTimeout = r.IdleTimeout
	t.cfg.HandshakeTimeout = r.HandshakeTimeout
	t.cfg.MaxPinholesPerSession = r.MaxPinholesPerSession
	t.cfg.Servers = slices.Clone(r.Servers)
	t.cfg.FTPSRanges = slices.Clone(r.FTPSRanges)
	t.cfg.ActiveRanges = slices.Clone(r.ActiveRanges)
	if r.ControlPorts != nil {
		t.cfg.ControlPorts = slices.Clone(r.ControlPorts)
		t.cfg.ImplicitPorts = slices.Clone(r.ImplicitPorts)
		clear(t.controls)
		for _, p := range t.cfg.ControlPorts {
			t.controls[p] = true
		}
	}
	var done Reconfigured
	for _, s := range t.sessions {
		if !t.controls[s.Server.Port()] {
			done.SessionsEnded++
			t.endSession(s, closedReload, "its control port is no longer in the configuration")
			continue
		}
		t.reconcile(s, &done)
	}
	for _, s := range t.proxied {
		if !t.controls[s.Server.Port()] {
			done.SessionsEnded++
			t.endProxied(s, closedReload, "its control port is no longer in the configuration", true)
			continue
		}
		t.reconcile(s, &done)
	}
	return done
}

// reconcile closes what the configuration no longer gives session s.
func (t *Tracker) reconcile(s *Session, done *Reconfigured) {
	for _, p := range slices.Clone(s.pinholes) {
		if why := t.disallows(s, p.channel); why != "" {
			done.PinholesClosed++
			t.closePinhole(p.key, p, closedReload, "the reloaded configuration no longer allows it: "+why)
		}
	}
	if s.scoped != nil {
		t.reconcileScoped(s)
		if s.scoped == nil {
			done.RangesClosed++
		}
	}
}

// disallows says why the configuration now would refuse an opened
// channel, or "".
func (t *Tracker) disallows(s *Session, ch Channel) string {
	_, why, pol, _ := t.serverPolicy(s, ch)
	switch {
	case why != "":
	case s.nat != nil:
		_, why = t.checkNAT(s, ch, pol)
	case ch.Passive:
		_, why = pol.Check(ch, s.Server.Addr())
	default:
		_, why = pol.Check(ch, s.Client.Addr())
	}
	return why
}
