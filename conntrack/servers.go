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
func (t *Tracker) serverPolicy(s *Session, ch Channel) (string, Policy, time.Duration) {
	pol, timeout := t.policy, t.cfg.PinholeTimeout
	sp, served := t.serverFor(s.Server)
	switch {
	case !served:
		return fmt.Sprintf("server %s is not one ftpgate serves (see the [[server]] entries of its configuration)", s.Server), pol, timeout
	case sp == nil:
		return "", pol, timeout
	case sp.NoActive && !ch.Passive:
		return fmt.Sprintf("active mode is not allowed to server %s (its [[server]] entry %s)", s.Server, sp), pol, timeout
	}
	if sp.MinDataPort != 0 {
		pol.MinDataPort = sp.MinDataPort
	}
	if sp.PinholeTimeout != 0 {
		timeout = sp.PinholeTimeout
	}
	return "", pol, timeout
}

// Reconfigurable is what a running tracker takes from a reloaded
// configuration. Caps, ports and the capture are fixed at start.
type Reconfigurable struct {
	MinDataPort           uint16
	PinholeTimeout        time.Duration
	IdleTimeout           time.Duration
	HandshakeTimeout      time.Duration
	MaxPinholesPerSession int
	Servers               []ServerPolicy
}

// Reconfigure applies a reloaded configuration to announcements from now
// on; pinholes already open keep their timeout.
func (t *Tracker) Reconfigure(r Reconfigurable) {
	t.cfg.MinDataPort = r.MinDataPort
	t.policy.MinDataPort = r.MinDataPort
	t.cfg.PinholeTimeout = r.PinholeTimeout
	t.cfg.IdleTimeout = r.IdleTimeout
	t.cfg.HandshakeTimeout = r.HandshakeTimeout
	t.cfg.MaxPinholesPerSession = r.MaxPinholesPerSession
	t.cfg.Servers = slices.Clone(r.Servers)
}
