// Package conntrack turns captured packets into FTP control sessions and
// their announced data channels: decoding with checksum checks, TCP
// tracking per direction, the control-session state machine, the pairing
// of replies with commands, and the policy that accepts or refuses each
// channel before a pinhole is opened.
//
// It is a synchronous state machine: fed packets (HandlePacket,
// UsedReport, AdmitHeldSYN) and time (Tick, Feed, Expire) by one
// goroutine, it makes no system calls and starts no goroutines; what it
// decides goes to a rules.Backend, and its counters can be read from any
// goroutine (Snapshot).
package conntrack

import (
	"encoding/base32"
	"encoding/binary"
	"hash/fnv"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/gopacket/gopacket/layers"

	"github.com/ftpgate/ftpgate/internal/source"
	"github.com/ftpgate/ftpgate/rules"
)

// Tracker follows every FTP control session in the packets it is given
// and programs the backend. It is not safe for concurrent use: one
// goroutine feeds it packets and calls Commit and Expire.
type Tracker struct {
	env
	fw       rules.Backend
	policy   Policy
	controls map[uint16]bool
	sessions map[connKey]*Session
	proxied  map[uint64]*Session // sessions of the control proxy, by its id
	// Per-source shares of the session caps: established sessions and
	// half-open ones.
	bySource, halfOpenBySource source.Shares
	// FTPS scoped ranges: the elements, shared by the sessions of one
	// client to one server, and how many each source holds.
	scoped struct {
		elems    *refSet[rules.ScopedRange]
		byPair   map[[2]netip.Addr][]rules.ScopedRange // client . server -> elements, for held SYNs
		bySource source.Shares
		open     int
	}
	// urgent: what is queued must not wait for the commit delay.
	urgent   bool
	nat      natPorts
	halfOpen int
	ended    map[connKey]time.Time // tombstones of ended control connections
	pinholes map[rules.Pinhole]*pinhole
	closing  map[rules.Pinhole]*pinhole // closed, a late report of their use may come
	admitted map[rules.Pinhole]*pinhole // used, waiting for the ruleset's confirmation
	// uncommitted: pinholes added since the last Commit.
	uncommitted []*pinhole
	retried     map[heldSYN]time.Time
	capWarned   [5]time.Time
	dirty       bool // backend changes queued since the last Commit
	// peers holds one element per pair of hosts with control sessions.
	peers *refSet[rules.Peers]
	seg   segment // decoded packet, reused
	// Timers (Tick, Feed).
	nextExpire, dirtySince, lastFeedExpire time.Time
	snapshot                               atomic.Pointer[Stats]
}

// NewTracker returns a tracker that opens pinholes through fw.
func NewTracker(cfg Config, fw rules.Backend) *Tracker {
	cfg.setDefaults()
	t := &Tracker{
		env:              env{cfg: cfg, log: cfg.Logger},
		fw:               fw,
		policy:           Policy{MinDataPort: cfg.MinDataPort},
		controls:         make(map[uint16]bool),
		sessions:         make(map[connKey]*Session),
		proxied:          make(map[uint64]*Session),
		bySource:         source.Shares{},
		halfOpenBySource: source.Shares{},
		nat: natPorts{lo: cfg.NATPorts[0], hi: cfg.NATPorts[1], used: make(map[netip.AddrPort]int), inUse: cfg.PublicPortInUse,
			bySource: source.Shares{}, share: cfg.NATPortsPerClient},
		ended:    make(map[connKey]time.Time),
		pinholes: make(map[rules.Pinhole]*pinhole),
		closing:  make(map[rules.Pinhole]*pinhole),
		admitted: make(map[rules.Pinhole]*pinhole),
		retried:  make(map[heldSYN]time.Time),
	}
	changed := func() { t.dirty = true }
	t.peers = newRefSet("control session peers", &t.env, changed, fw.AddPeers, fw.DelPeers)
	t.scoped.elems = newRefSet("FTPS scoped range", &t.env, changed, fw.AddScoped, fw.DelScoped)
	t.scoped.bySource = source.Shares{}
	t.scoped.byPair = map[[2]netip.Addr][]rules.ScopedRange{}
	for _, p := range cfg.ControlPorts {
		t.controls[p] = true
	}
	return t
}

// Stats returns the counters.
func (t *Tracker) Stats() Stats {
	s := t.stats
	s.SessionsTracked = len(t.sessions)
	s.HalfOpen = t.halfOpen
	s.PinholesOpen = len(t.pinholes)
	s.Scoped = t.scoped.open
	s.Proxied = len(t.proxied)
	for _, x := range t.sessions {
		s.LogSuppressed += uint64(x.limiter.suppressed)
	}
	for _, x := range t.proxied {
		s.LogSuppressed += uint64(x.limiter.suppressed)
	}
	return s
}

// connKey names a TCP connection regardless of direction.
type connKey struct{ a, b netip.AddrPort }

func makeConnKey(x, y netip.AddrPort) connKey {
	if x.Addr().Less(y.Addr()) || (x.Addr() == y.Addr() && x.Port() < y.Port()) {
		return connKey{x, y}
	}
	return connKey{y, x}
}

// HandlePacket decodes one captured packet of the given link type and
// feeds its segment to its control session. It never panics on hostile
// input.
func (t *Tracker) HandlePacket(data []byte, link layers.LinkType, ts time.Time) {
	t.stats.Packets++
	if ts.After(t.now) {
		t.now = ts
	}
	seg := &t.seg
	switch decode(data, link, seg) {
	case decodedTCP:
	case decodeNotTCP:
		t.stats.NotControl++
		return
	case decodeFragment:
		t.stats.Fragments++
		return
	case decodeBadSum:
		t.stats.BadChecksums++
		return
	default:
		t.stats.Undecodable++
		return
	}
	if !t.controls[seg.src.Port()] && !t.controls[seg.dst.Port()] {
		t.stats.NotControl++
		if t.cfg.ConsumeOnSYN {
			t.consumeOnSYN(seg)
		}
		return
	}
	key := makeConnKey(seg.src, seg.dst)
	s := t.sessions[key]
	if s != nil && seg.has(flagSYN) && !seg.has(flagACK) && !s.closingAt.IsZero() && seg.seq+1 != s.h[fromClient].next {
		t.endSession(s, closedSessionClosed, "control connection closed") // its ports are taken by a new one
		s = nil
	}
	if s == nil {
		if s = t.startSession(key, seg); s == nil {
			return
		}
	}
	d := fromServer
	if seg.src == s.Client {
		d = fromClient
	}
	s.segment(d, seg, t.now)
}

// startSession starts tracking the connection of a segment nobody
// tracks: a SYN starts a half-open session, data a session picked up
// mid-stream. Anything else, and the segments of a connection that
// ended, start nothing.
func (t *Tracker) startSession(key connKey, seg *segment) *Session {
	syn := seg.has(flagSYN) && !seg.has(flagACK)
	if _, gone := t.ended[key]; gone && !syn {
		t.stats.AfterClose++
		return nil
	}
	switch {
	case syn:
		source := source.Of(seg.src.Addr())
		switch {
		case t.halfOpen >= t.cfg.MaxHalfOpen:
			t.stats.HalfOpenRefused++
			t.warnCap(1, "half-open cap reached, not tracking new control connections until they carry FTP",
				"cap", t.cfg.MaxHalfOpen, "refused_so_far", t.stats.HalfOpenRefused)
			return nil
		case t.halfOpenBySource[source] >= t.cfg.MaxHalfOpenPerClient:
			t.stats.HalfOpenRefused++
			t.warnCap(4, "a client has reached its share of half-open control connections; its new ones are not tracked until they carry FTP",
				"source", source.String(), "share", t.cfg.MaxHalfOpenPerClient, "refused_so_far", t.stats.HalfOpenRefused)
			return nil
		}
		delete(t.ended, key)
		s := t.newSession(seg.src, seg.dst, true)
		s.halfOpen = true
		t.halfOpen++
		t.halfOpenBySource.Add(source)
		return s
	case len(seg.payload) > 0 && !seg.has(flagRST):
		// The side on a control port is the server.
		client, server := seg.src, seg.dst
		if t.controls[seg.src.Port()] && !t.controls[seg.dst.Port()] {
			client, server = seg.dst, seg.src
		}
		if !t.roomFor(client.Addr()) {
			t.refuseSession(key)
			return nil
		}
		delete(t.ended, key)
		s := t.newSession(client, server, false)
		s.pickedUp = true
		t.establish(s)
		return s
	}
	return nil
}

// roomFor reports whether a session of this client may be tracked: the
// cap is not reached, nor the client's share of it.
func (t *Tracker) roomFor(client netip.Addr) bool {
	return t.established() < t.cfg.MaxSessions && t.bySource[source.Of(client)] < t.cfg.MaxSessionsPerClient
}

func (t *Tracker) established() int { return len(t.sessions) - t.halfOpen }

func (t *Tracker) refuseSession(key connKey) {
	t.stats.SessionsRefused++
	t.tombstone(key)
	t.warnCap(0, "session cap reached (for the gateway, or this client's share of it), not tracking new control sessions",
		"cap", t.cfg.MaxSessions, "share_per_client", t.cfg.MaxSessionsPerClient, "refused_so_far", t.stats.SessionsRefused)
}

// warnCap logs that a cap was hit, at most every ten seconds per cap.
func (t *Tracker) warnCap(which int, msg string, args ...any) {
	if t.now.Sub(t.capWarned[which]) > 10*time.Second {
		t.capWarned[which] = t.now
		t.log.Warn(msg, args...)
	}
}

func (t *Tracker) tombstone(key connKey) {
	if len(t.ended) >= maxTombstones {
		for k, at := range t.ended {
			if t.now.Sub(at) >= tombstoneFor/2 {
				delete(t.ended, k)
			}
		}
		if len(t.ended) >= maxTombstones {
			clear(t.ended)
		}
	}
	t.ended[key] = t.now
}

func (t *Tracker) newSession(client, server netip.AddrPort, syn bool) *Session {
	s := &Session{ID: t.sessionID(client, server), Client: client, Server: server, Start: t.now, Last: t.now, host: t, env: &t.env}
	s.pair.inStep, s.pair.greeting = syn, syn
	if !syn {
		s.pair.why = "the session was picked up mid-stream"
	}
	for d := range s.lines {
		s.lines[d].max = t.cfg.MaxLineLength
		s.h[d].wscale = -1
	}
	s.lines[fromClient].lineStart = looksLikeCommand
	s.lines[fromServer].lineStart = looksLikeReply
	if t.isImplicit(server.Port()) {
		s.implicit = true
		s.startTLS()
	}
	t.sessions[makeConnKey(client, server)] = s
	t.peers.hold(rules.Peers{Client: client.Addr(), Server: server.Addr()})
	return s
}

// sessionID is a stable id for a session, Zeek-style: a hash of its ends
// and start.
func (t *Tracker) sessionID(client, server netip.AddrPort) string {
	h := fnv.New64a()
	b, _ := client.MarshalBinary()
	h.Write(b)
	b, _ = server.MarshalBinary()
	h.Write(b)
	var tb [8]byte
	binary.BigEndian.PutUint64(tb[:], uint64(t.now.UnixNano()))
	h.Write(tb[:])
	return "C" + base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(h.Sum(nil))[:12]
}

// establish is called when a session carries its first byte of FTP: it
// now counts against MaxSessions, not MaxHalfOpen.
func (t *Tracker) establish(s *Session) {
	if s.established {
		return
	}
	if s.halfOpen {
		if !t.roomFor(s.Client.Addr()) {
			t.refuseSession(makeConnKey(s.Client, s.Server))
			t.endSession(s, closedOther, "session cap reached")
			return
		}
		s.halfOpen = false
		t.halfOpen--
		t.halfOpenBySource.Remove(source.Of(s.Client.Addr()))
	}
	s.established = true
	t.bySource.Add(source.Of(s.Client.Addr()))
	t.stats.SessionsStarted++
	t.log.Info("session start", "session", s.ID, "client", s.Client.String(), "server", s.Server.String(),
		"picked_up", s.pickedUp)
}

func (t *Tracker) endSession(s *Session, kind CloseKind, reason string) {
	if s.ended {
		return
	}
	s.end(kind, reason)
	key := makeConnKey(s.Client, s.Server)
	delete(t.sessions, key)
	t.tombstone(key)
	t.peers.release(rules.Peers{Client: s.Client.Addr(), Server: s.Server.Addr()})
	if s.halfOpen {
		t.halfOpen--
		t.halfOpenBySource.Remove(source.Of(s.Client.Addr()))
	}
	if !s.established {
		return
	}
	t.bySource.Remove(source.Of(s.Client.Addr()))
	t.stats.SessionsEnded++
	attrs := []any{"session", s.ID, "reason", reason, "duration", s.Last.Sub(s.Start).Round(time.Millisecond).String()}
	if s.limiter.suppressed > 0 {
		attrs = append(attrs, "log_lines_suppressed", s.limiter.suppressed)
		t.stats.LogSuppressed += uint64(s.limiter.suppressed)
	}
	t.log.Info("session end", attrs...)
}
