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
func serverFor(servers []ServerPolicy, server netip.AddrPort) (*ServerPolicy, bool) {
	if len(servers) == 0 {
		return nil, true
	}
	for i := range servers {
		sp := &servers[i]
		if sp.Prefix.Contains(server.Addr()) && (len(sp.Ports) == 0 || slices.Contains(sp.Ports, server.Port())) {
			return sp, true
		}
	}
	return nil, false
}

// serverPolicy applies the server's policy to an announcement: it returns
// why the server refuses it (or ""), the policy to check it with, and the
// pinhole timeout.
func serverPolicy(cfg *Config, s *Session, ch Channel) (RefusalKind, string, Policy, time.Duration) {
	pol, timeout := Policy{MinDataPort: cfg.MinDataPort}, cfg.PinholeTimeout
	sp, served := serverFor(cfg.Servers, s.Server)
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

// disallows says why the configuration now would refuse an opened
// channel, or "".
func disallows(cfg *Config, s *Session, ch Channel) string {
	_, why, pol, _ := serverPolicy(cfg, s, ch)
	switch {
	case why != "":
	case s.nat != nil:
		_, why = checkNAT(s, ch, pol)
	case ch.Passive:
		_, why = pol.Check(ch, s.Server.Addr())
	default:
		_, why = pol.Check(ch, s.Client.Addr())
	}
	return why
}
