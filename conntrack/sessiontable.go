package conntrack

import (
	"encoding/base32"
	"encoding/binary"
	"hash/fnv"
	"net/netip"
	"slices"
	"time"

	"github.com/ftpgate/ftpgate/internal/source"
	"github.com/ftpgate/ftpgate/nat"
	"github.com/ftpgate/ftpgate/rules"
)

// connKey names a TCP connection regardless of direction.
type connKey struct{ a, b netip.AddrPort }

func makeConnKey(x, y netip.AddrPort) connKey {
	if x.Addr().Less(y.Addr()) || (x.Addr() == y.Addr() && x.Port() < y.Port()) {
		return connKey{x, y}
	}
	return connKey{y, x}
}

// sessionTable holds the sessions: those of control connections seen in
// packets, by connection, and those of the control proxy, by its id;
// the caps on them, for the gateway and per source; the peers every
// tracked session holds in the kernel; and, for a while, the connections
// that ended, so that their last segments start nothing.
type sessionTable struct {
	env     *env
	host    host // what each new session calls
	peers   *refSet[rules.Peers]
	tracked map[connKey]*Session
	proxied map[uint64]*Session
	ended   map[connKey]time.Time
	// Per-source shares of the caps: established sessions and half-open
	// ones.
	bySource, halfOpenBySource source.Shares
	halfOpen                   int
}

func newSessionTable(e *env, fw *firewall) *sessionTable {
	return &sessionTable{env: e, peers: newRefSet("control session peers", fw, fw.backend.AddPeers, fw.backend.DelPeers),
		tracked: map[connKey]*Session{}, proxied: map[uint64]*Session{}, ended: map[connKey]time.Time{},
		bySource: source.Shares{}, halfOpenBySource: source.Shares{}}
}

// forSegment returns the session of a segment of a control connection,
// starting one if the segment may start it (see start); nil if not.
func (t *sessionTable) forSegment(seg *segment, controls map[uint16]bool) *Session {
	key := makeConnKey(seg.src, seg.dst)
	s := t.tracked[key]
	if s != nil && s.tcp.reusedBy(seg) {
		t.endSession(s, closedSessionClosed, "control connection closed") // its ports are taken by a new one
		s = nil
	}
	if s == nil {
		s = t.start(key, seg, controls)
	}
	return s
}

// start starts tracking the connection of a segment nobody tracks: a SYN
// starts a half-open session, data a session picked up mid-stream.
// Anything else, and the segments of a connection that ended, start
// nothing.
func (t *sessionTable) start(key connKey, seg *segment, controls map[uint16]bool) *Session {
	syn := seg.has(flagSYN) && !seg.has(flagACK)
	if _, gone := t.ended[key]; gone && !syn {
		t.env.stats.AfterClose++
		return nil
	}
	switch {
	case syn:
		return t.startHalfOpen(key, seg)
	case len(seg.payload) > 0 && !seg.has(flagRST):
		// The side on a control port is the server.
		client, server := seg.src, seg.dst
		if controls[seg.src.Port()] && !controls[seg.dst.Port()] {
			client, server = seg.dst, seg.src
		}
		if !t.roomFor(client.Addr()) {
			t.refuseSession(key)
			return nil
		}
		delete(t.ended, key)
		s := t.newSession(client, server, false)
		s.life.pickedUp = true
		t.establish(s)
		return s
	}
	return nil
}

// startHalfOpen starts the session of a SYN, within the half-open caps.
func (t *sessionTable) startHalfOpen(key connKey, seg *segment) *Session {
	cfg := &t.env.cfg
	source := source.Of(seg.src.Addr())
	switch {
	case t.halfOpen >= cfg.MaxHalfOpen:
		t.env.stats.HalfOpenRefused++
		t.env.warnCap(capWarnHalfOpen, "half-open cap reached, not tracking new control connections until they carry FTP",
			"cap", cfg.MaxHalfOpen, "refused_so_far", t.env.stats.HalfOpenRefused)
		return nil
	case t.halfOpenBySource[source] >= cfg.MaxHalfOpenPerClient:
		t.env.stats.HalfOpenRefused++
		t.env.warnCap(capWarnHalfOpenShare, "a client has reached its share of half-open control connections; its new ones are not tracked until they carry FTP",
			"source", source.String(), "share", cfg.MaxHalfOpenPerClient, "refused_so_far", t.env.stats.HalfOpenRefused)
		return nil
	}
	delete(t.ended, key)
	s := t.newSession(seg.src, seg.dst, true)
	s.life.halfOpen = true
	t.halfOpen++
	t.halfOpenBySource.Add(source)
	return s
}

// roomFor reports whether a session of this client may be tracked: the
// cap is not reached, nor the client's share of it.
func (t *sessionTable) roomFor(client netip.Addr) bool {
	return len(t.tracked)-t.halfOpen < t.env.cfg.MaxSessions && t.bySource[source.Of(client)] < t.env.cfg.MaxSessionsPerClient
}

func (t *sessionTable) refuseSession(key connKey) {
	t.env.stats.SessionsRefused++
	t.tombstone(key)
	t.env.warnCap(capWarnSessions, "session cap reached (for the gateway, or this client's share of it), not tracking new control sessions",
		"cap", t.env.cfg.MaxSessions, "share_per_client", t.env.cfg.MaxSessionsPerClient, "refused_so_far", t.env.stats.SessionsRefused)
}

func (t *sessionTable) tombstone(key connKey) {
	if len(t.ended) >= maxTombstones {
		for k, at := range t.ended {
			if t.env.now.Sub(at) >= tombstoneFor/2 {
				delete(t.ended, k)
			}
		}
		if len(t.ended) >= maxTombstones {
			clear(t.ended)
		}
	}
	t.ended[key] = t.env.now
}

// forgetEnded forgets the connections that ended long enough ago.
func (t *sessionTable) forgetEnded(now time.Time) {
	for k, at := range t.ended {
		if now.Sub(at) >= tombstoneFor {
			delete(t.ended, k)
		}
	}
}

// newSession makes a session: of a connection seen from its SYN (syn),
// or picked up, or of the control proxy (nat).
func (t *sessionTable) newSession(client, server netip.AddrPort, syn bool) *Session {
	s := &Session{ID: t.sessionID(client, server), Client: client, Server: server, Start: t.env.now, Last: t.env.now,
		host: t.host, env: t.env, tcp: newTCPConn(t.env)}
	s.pair.inStep, s.pair.greeting = syn, syn
	if !syn {
		s.pair.why = "the session was picked up mid-stream"
	}
	for d := range s.lines {
		s.lines[d].max = t.env.cfg.MaxLineLength
	}
	s.lines[fromClient].lineStart = looksLikeCommand
	s.lines[fromServer].lineStart = looksLikeReply
	if slices.Contains(t.env.cfg.ImplicitPorts, server.Port()) {
		s.ftps.startImplicit()
	}
	t.tracked[makeConnKey(client, server)] = s
	t.peers.hold(rules.Peers{Client: client.Addr(), Server: server.Addr()})
	return s
}

// sessionID is a stable id for a session, Zeek-style: a hash of its ends
// and start.
func (t *sessionTable) sessionID(client, server netip.AddrPort) string {
	h := fnv.New64a()
	b, _ := client.MarshalBinary()
	h.Write(b)
	b, _ = server.MarshalBinary()
	h.Write(b)
	var tb [8]byte
	binary.BigEndian.PutUint64(tb[:], uint64(t.env.now.UnixNano()))
	h.Write(tb[:])
	return "C" + base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(h.Sum(nil))[:12]
}

// establish is called when a session carries its first byte of FTP: it
// now counts against MaxSessions, not MaxHalfOpen.
func (t *sessionTable) establish(s *Session) {
	if s.life.established {
		return
	}
	if s.life.halfOpen {
		if !t.roomFor(s.Client.Addr()) {
			t.refuseSession(makeConnKey(s.Client, s.Server))
			t.endSession(s, closedOther, "session cap reached")
			return
		}
		s.life.halfOpen = false
		t.halfOpen--
		t.halfOpenBySource.Remove(source.Of(s.Client.Addr()))
	}
	s.life.established = true
	s.tcp.established = true
	t.bySource.Add(source.Of(s.Client.Addr()))
	t.env.stats.SessionsStarted++
	t.env.log.Info("session start", "session", s.ID, "client", s.Client.String(), "server", s.Server.String(),
		"picked_up", s.life.pickedUp)
}

// endSession ends a session of a control connection seen in packets.
func (t *sessionTable) endSession(s *Session, kind CloseKind, reason string) {
	if s.life.ended {
		return
	}
	if s.nat != nil {
		t.endProxied(s, kind, reason, true)
		return
	}
	s.end(kind, reason)
	key := makeConnKey(s.Client, s.Server)
	delete(t.tracked, key)
	t.tombstone(key)
	t.peers.release(rules.Peers{Client: s.Client.Addr(), Server: s.Server.Addr()})
	if s.life.halfOpen {
		t.halfOpen--
		t.halfOpenBySource.Remove(source.Of(s.Client.Addr()))
	}
	if !s.life.established {
		return
	}
	t.bySource.Remove(source.Of(s.Client.Addr()))
	t.logEnd(s, reason)
}

// openProxied starts the session of a control connection the control
// proxy took over (see Tracker.OpenProxied).
func (t *sessionTable) openProxied(id uint64, tr nat.Translation, packet bool) {
	if _, dup := t.proxied[id]; dup {
		return
	}
	path := "proxy"
	if packet {
		path = "packet"
	}
	if old := t.tracked[makeConnKey(tr.Client, tr.Server)]; old != nil && !old.life.established {
		t.endSession(old, closedOther, "translated: followed by the NAT "+path+" path")
	}
	s := &Session{ID: t.sessionID(tr.Client, tr.Server), Client: tr.Client, Server: tr.Server,
		Start: t.env.now, Last: t.env.now, host: t.host, env: t.env, nat: &natSession{id: id, tr: tr, packet: packet}}
	s.pair.inStep, s.pair.greeting = true, true
	s.life.established = true
	for d := range s.lines {
		s.lines[d].max = t.env.cfg.MaxLineLength
		s.lines[d].pass = func(b []byte) { s.nat.send(d, b) }
	}
	t.proxied[id] = s
	t.env.stats.SessionsStarted++
	if packet {
		t.env.stats.SessionsTranslated++
	} else {
		t.env.stats.SessionsProxied++
	}
	t.env.log.Info("session start", "session", s.ID, "client", tr.Client.String(), "server", tr.Server.String(),
		"proxied", !packet, "nat_path", path, "client_seen_as", tr.ClientSeen.Addr().String(), "server_seen_as", tr.ServerSeen.String(),
		"translated", tr.Translated())
	if slices.Contains(t.env.cfg.ImplicitPorts, tr.Server.Port()) {
		s.ftps.startImplicit()
	}
}

// endProxied ends a session of the control proxy; closeConn says the
// proxy must still be told to close its connection (the tracker ended
// it, not the connection).
func (t *sessionTable) endProxied(s *Session, kind CloseKind, reason string, closeConn bool) {
	if s.life.ended {
		return
	}
	s.end(kind, reason)
	delete(t.proxied, s.nat.id)
	t.logEnd(s, reason)
	if closeConn && t.env.cfg.ProxyConns != nil {
		t.env.cfg.ProxyConns.CloseConn(s.nat.id)
	}
}

func (t *sessionTable) logEnd(s *Session, reason string) {
	t.env.stats.SessionsEnded++
	attrs := []any{"session", s.ID, "reason", reason, "duration", s.Last.Sub(s.Start).Round(time.Millisecond).String()}
	if s.nat != nil {
		attrs = append(attrs, "proxied", !s.nat.packet)
	}
	if s.limiter.suppressed > 0 {
		attrs = append(attrs, "log_lines_suppressed", s.limiter.suppressed)
		t.env.stats.LogSuppressed += uint64(s.limiter.suppressed)
	}
	t.env.log.Info("session end", attrs...)
}

// all calls fn on every session, tracked then proxied; fn may end them.
func (t *sessionTable) all(fn func(*Session)) {
	for _, s := range t.tracked {
		fn(s)
	}
	for _, s := range t.proxied {
		fn(s)
	}
}

// expire ends idle sessions and those that carried no FTP in time, gives
// up on bytes overdue for reassembly, closes the scoped ranges of TLS
// handshakes overdue, and forgets the connections that ended long ago.
func (t *sessionTable) expire(now time.Time, scoped *scopedTable) {
	for _, s := range t.tracked {
		t.expireTracked(s, now, scoped)
	}
	for _, s := range t.proxied {
		t.expireProxied(s, now, scoped)
	}
	t.forgetEnded(now)
}

func (t *sessionTable) expireTracked(s *Session, now time.Time, scoped *scopedTable) {
	cfg := &t.env.cfg
	switch {
	case !s.life.established && !now.Before(s.Start.Add(cfg.HandshakeTimeout)):
		t.env.stats.HalfOpenExpired++
		t.endSession(s, closedSessionClosed, "no FTP within the handshake timeout")
	case !now.Before(s.Last.Add(cfg.IdleTimeout)):
		t.endSession(s, closedSessionIdle, "control connection idle")
	case !s.tcp.closingAt.IsZero() && !now.Before(s.tcp.closingAt.Add(closeLinger)):
		t.endSession(s, closedSessionClosed, "control connection closed")
	default:
		s.tcp.release(s, now)
		scoped.expire(s, now)
	}
}

// expireProxied ends a proxied session whose server never spoke, that
// went idle, or whose other side never closed: whatever their state,
// none outlives the timeouts.
func (t *sessionTable) expireProxied(s *Session, now time.Time, scoped *scopedTable) {
	cfg := &t.env.cfg
	n := s.nat
	switch {
	case !n.serverSeen && !now.Before(s.Start.Add(cfg.HandshakeTimeout)):
		t.env.stats.HalfOpenExpired++
		t.endProxied(s, closedSessionClosed, "no FTP from the server within the handshake timeout", true)
	case !now.Before(s.Last.Add(cfg.IdleTimeout)):
		t.endProxied(s, closedSessionIdle, "control connection idle", true)
	case !n.closingAt.IsZero() && !now.Before(n.closingAt.Add(closeLinger)):
		t.endProxied(s, closedSessionClosed, "control connection closed", true)
	default:
		scoped.expire(s, now)
	}
}
