package conntrack

import (
	"slices"
	"time"
)

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
	cfg := &t.env.cfg
	cfg.MinDataPort = r.MinDataPort
	cfg.PinholeTimeout = r.PinholeTimeout
	cfg.IdleTimeout = r.IdleTimeout
	cfg.HandshakeTimeout = r.HandshakeTimeout
	cfg.MaxPinholesPerSession = r.MaxPinholesPerSession
	cfg.Servers = slices.Clone(r.Servers)
	cfg.FTPSRanges = slices.Clone(r.FTPSRanges)
	cfg.ActiveRanges = slices.Clone(r.ActiveRanges)
	if r.ControlPorts != nil {
		cfg.ControlPorts = slices.Clone(r.ControlPorts)
		cfg.ImplicitPorts = slices.Clone(r.ImplicitPorts)
		t.controls.set(cfg.ControlPorts)
	}
	var done Reconfigured
	t.sessions.all(func(s *Session) {
		if !t.controls[s.Server.Port()] {
			done.SessionsEnded++
			t.sessions.endSession(s, closedReload, "its control port is no longer in the configuration")
			return
		}
		t.reconcile(s, &done)
	})
	return done
}

// reconcile closes what the configuration no longer gives session s.
func (t *Tracker) reconcile(s *Session, done *Reconfigured) {
	for _, p := range slices.Clone(s.pinholes) {
		if why := disallows(&t.env.cfg, s, p.channel); why != "" {
			done.PinholesClosed++
			t.pinholes.close(p, closedReload, "the reloaded configuration no longer allows it: "+why)
		}
	}
	if t.scoped.reconcile(s) {
		done.RangesClosed++
	}
}
