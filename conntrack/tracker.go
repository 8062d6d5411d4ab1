// Package conntrack turns captured packets into FTP control sessions and
// their announced data channels: decoding with checksum checks, TCP
// tracking per direction, the control-session state machine, the pairing
// of replies with commands, and the policy that accepts or refuses each
// channel before a pinhole is opened.
//
// It is a synchronous state machine: fed packets (HandlePacket,
// UsedReport, AdmitHeldSYN, the control proxy's bytes) and time (Tick,
// Feed, Expire) by one goroutine, it makes no system calls and starts no
// goroutines; what it decides goes to a rules.Backend, what it sees to an
// Observer, and its counters can be read from any goroutine (Snapshot).
//
// The Tracker is the front door; behind it each part has one job:
// sessionTable (which sessions exist), Session (one control connection:
// tcpConn, the line splitter, pairing, TLS), decider (what an
// announcement may open), pinholeTable (each pinhole's life),
// scopedTable (FTPS ranges), and firewall (the backend, and when to
// commit).
package conntrack

import (
	"sync/atomic"
	"time"

	"github.com/gopacket/gopacket/layers"

	"github.com/ftpgate/ftpgate/nat"
	"github.com/ftpgate/ftpgate/rules"
)

// Tracker follows every FTP control session in the packets it is given
// and programs the backend. It is not safe for concurrent use: one
// goroutine feeds it packets and calls Commit and Expire.
type Tracker struct {
	env      env
	fw       firewall
	controls portSet
	sessions *sessionTable
	pinholes *pinholeTable
	scoped   *scopedTable
	decider  *decider
	natPorts *nat.Ports
	seg      segment // decoded packet, reused
	// Timers (Tick, Feed).
	nextExpire, lastFeedExpire time.Time
	snapshot                   atomic.Pointer[Stats]
}

// tables is what the sessions of a tracker call (host): each method is
// one of its parts'.
type tables struct {
	*decider
	*pinholeTable
	*sessionTable
	*scopedTable
}

// NewTracker returns a tracker that opens pinholes through fw.
func NewTracker(cfg Config, fw rules.Backend) *Tracker {
	cfg.setDefaults()
	t := &Tracker{controls: portSet{}}
	t.env = env{cfg: cfg, log: cfg.Logger, obs: cfg.Observer}
	t.fw = firewall{backend: fw, env: &t.env}
	t.natPorts = nat.NewPorts(cfg.NATPorts[0], cfg.NATPorts[1], cfg.NATPortsPerClient, cfg.PublicPortInUse)
	t.sessions = newSessionTable(&t.env, &t.fw)
	t.pinholes = newPinholeTable(&t.env, &t.fw, t.natPorts)
	t.scoped = newScopedTable(&t.env, &t.fw)
	t.decider = &decider{env: &t.env, pinholes: t.pinholes, ports: t.natPorts}
	t.sessions.host = tables{t.decider, t.pinholes, t.sessions, t.scoped}
	t.controls.set(cfg.ControlPorts)
	return t
}

// portSet is a set of TCP ports.
type portSet map[uint16]bool

func (ps portSet) set(ports []uint16) {
	clear(ps)
	for _, p := range ports {
		ps[p] = true
	}
}

// Stats returns the counters.
func (t *Tracker) Stats() Stats {
	s := t.env.stats
	s.SessionsTracked = len(t.sessions.tracked)
	s.HalfOpen = t.sessions.halfOpen
	s.PinholesOpen = len(t.pinholes.open)
	s.Scoped = t.scoped.open
	s.Proxied = len(t.sessions.proxied)
	t.sessions.all(func(x *Session) { s.LogSuppressed += uint64(x.limiter.suppressed) })
	return s
}

// Snapshot returns the counters as of the latest Tick. Unlike Stats, it
// may be called from any goroutine.
func (t *Tracker) Snapshot() Stats {
	if s := t.snapshot.Load(); s != nil {
		return *s
	}
	return Stats{}
}

// HandlePacket decodes one captured packet of the given link type and
// feeds its segment to its control session. It never panics on hostile
// input.
func (t *Tracker) HandlePacket(data []byte, link layers.LinkType, ts time.Time) {
	stats := &t.env.stats
	stats.Packets++
	t.env.advance(ts)
	seg := &t.seg
	switch decode(data, link, seg) {
	case decodedTCP:
	case decodeNotTCP:
		stats.NotControl++
		return
	case decodeFragment:
		stats.Fragments++
		return
	case decodeBadSum:
		stats.BadChecksums++
		return
	default:
		stats.Undecodable++
		return
	}
	if !t.controls[seg.src.Port()] && !t.controls[seg.dst.Port()] {
		stats.NotControl++
		if t.env.cfg.ConsumeOnSYN {
			t.pinholes.consumeOnSYN(seg)
		}
		return
	}
	s := t.sessions.forSegment(seg, t.controls)
	if s == nil {
		return
	}
	d := fromServer
	if seg.src == s.Client {
		d = fromClient
	}
	s.tcp.segment(s, d, seg, t.env.now)
}

// IsControl reports whether a raw IP packet is TCP to or from a control
// port.
func (t *Tracker) IsControl(data []byte) bool {
	var seg segment
	return decode(data, rawIP, &seg) == decodedTCP && (t.controls[seg.src.Port()] || t.controls[seg.dst.Port()])
}

// ControlPorts are the control ports the tracker watches now.
func (t *Tracker) ControlPorts() []uint16 { return t.env.cfg.ControlPorts }

// CloseAll ends every session, closing every pinhole with reason, as on
// shutdown or at the end of a capture file.
func (t *Tracker) CloseAll(reason string) {
	// What was held back for bytes that never came is delivered first.
	t.env.draining = true
	for _, s := range t.sessions.tracked {
		s.tcp.release(s, t.env.now)
	}
	t.env.draining = false
	for _, s := range t.sessions.tracked {
		t.sessions.endSession(s, closedStopping, reason)
	}
	for _, s := range t.sessions.proxied {
		t.sessions.endProxied(s, closedStopping, reason, false)
	}
	t.pinholes.closeAll(reason)
}

// CopiesLost takes the count of the times copies of control traffic were
// lost (the NFLOG socket overflowed) and warns when it grows.
func (t *Tracker) CopiesLost(n uint64) {
	if n != t.env.stats.CopiesLost {
		t.env.stats.CopiesLost = n
		t.env.warnCap(capWarnCopiesLost, "copies of control traffic lost (NFLOG socket overflowed); sessions that lost bytes refuse active mode from then on",
			"overflows_so_far", n)
	}
}
