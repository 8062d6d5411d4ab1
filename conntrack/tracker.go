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
	"log/slog"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/gopacket/gopacket/layers"

	"github.com/ftpgate/ftpgate/rules"
)

// DefaultCommitDelay is how long a new pinhole waits, under inline
// capture, before it is committed. Most data SYNs come within it and are
// admitted from ftpgate's own table (see RunInline); on the lab, going
// from 2 ms to 10 ms cut ftpgate's CPU per transfer by 10-15%.
const DefaultCommitDelay = 10 * time.Millisecond

// Defaults of the limits on cheap traffic.
const (
	// DefaultHandshakeTimeout: a control connection must carry its first
	// byte of FTP (the server's greeting, normally at once) within this
	// time of its first packet, or it is forgotten.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultMaxHalfOpen control connections that have carried no FTP yet
	// are tracked at most; they do not count against MaxSessions.
	DefaultMaxHalfOpen = 4096
	// DefaultReorderWait: bytes that one side acknowledged but ftpgate
	// has not seen are given up as lost after this long (passive capture
	// and files; inline copies come in order and are given up at once).
	DefaultReorderWait = time.Second
	// closeLinger ends a session this long after its first FIN, if the
	// second never shows.
	closeLinger = time.Minute
	// tombstoneFor is how long the segments of an ended control
	// connection are recognised and ignored rather than picked up anew.
	tombstoneFor  = 2 * time.Minute
	maxTombstones = 65536
)

// Config holds the tracker's limits and policy. Zero values take the
// defaults named on each field.
type Config struct {
	ControlPorts          []uint16      // default [21]
	MinDataPort           uint16        // default 1024
	PinholeTimeout        time.Duration // default 60s
	IdleTimeout           time.Duration // control session idle limit, default 30m
	HandshakeTimeout      time.Duration // default DefaultHandshakeTimeout
	MaxSessions           int           // tracked control sessions that carried FTP, default 65536
	MaxHalfOpen           int           // default DefaultMaxHalfOpen
	MaxPinholesPerSession int           // default 4
	MaxPinholes           int           // in all, default 65536
	MaxLineLength         int           // bytes without the line end, default 2048
	// Inline says the packets are the kernel's copies of segments its
	// conntrack validated, in the order the kernel handled them: bytes
	// one side acknowledged but ftpgate never saw are then lost at once,
	// not waited for (see ReorderWait).
	Inline bool
	// ReorderWait is how long acknowledged but unseen bytes are waited
	// for otherwise; default DefaultReorderWait.
	ReorderWait time.Duration
	// ReportWindow is how long the log line of a pinhole closed for a
	// reason of the control session waits for a late kernel report that
	// its data connection had started (see PinholeConsumed). 0 logs at
	// once, as for capture files, where there are no such reports.
	ReportWindow time.Duration
	// CommitDelay is how long inline capture may leave pinhole changes
	// uncommitted; see RunInline. Zero means DefaultCommitDelay; a
	// negative value commits at once.
	CommitDelay time.Duration
	Logger      *slog.Logger
	// OnChannel, if set, receives every announced channel with its verdict.
	OnChannel func(Channel)
}

func (c *Config) setDefaults() {
	if len(c.ControlPorts) == 0 {
		c.ControlPorts = []uint16{21}
	}
	if c.PinholeTimeout == 0 {
		c.PinholeTimeout = 60 * time.Second
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 30 * time.Minute
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.MaxSessions == 0 {
		c.MaxSessions = 65536
	}
	if c.MaxHalfOpen == 0 {
		c.MaxHalfOpen = DefaultMaxHalfOpen
	}
	if c.MaxPinholesPerSession == 0 {
		c.MaxPinholesPerSession = 4
	}
	if c.MaxPinholes == 0 {
		c.MaxPinholes = 65536
	}
	if c.MaxLineLength == 0 {
		c.MaxLineLength = 2048
	}
	switch {
	case c.Inline:
		c.ReorderWait = 0
	case c.ReorderWait == 0:
		c.ReorderWait = DefaultReorderWait
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.CommitDelay == 0:
		c.CommitDelay = DefaultCommitDelay
	case c.CommitDelay < 0:
		c.CommitDelay = 0
	}
}

// Stats counts what the tracker saw and dropped. Nothing is dropped
// without being counted here.
type Stats struct {
	Packets           uint64 // packets handed to the tracker
	NotControl        uint64 // not TCP to or from a control port
	Undecodable       uint64 // truncated or unknown link/network layers
	Fragments         uint64 // IP fragments (control traffic is never fragmented in practice)
	BadChecksums      uint64 // IP or TCP checksum wrong: never reached the receiver's TCP
	OutOfWindow       uint64 // segments and resets outside what their receiver would accept
	AfterClose        uint64 // segments of control connections that had ended
	SessionsStarted   uint64 // control sessions that carried FTP
	SessionsEnded     uint64
	SessionsRefused   uint64 // a new session found the session cap reached
	HalfOpenRefused   uint64 // a new control connection found the half-open cap reached
	HalfOpenExpired   uint64 // control connections that carried no FTP within the handshake timeout
	Lines             uint64
	LinesTooLong      uint64
	GapBytes          uint64 // bytes lost (missing from the capture, or beyond a buffer limit)
	OutOfOrderDropped uint64 // out-of-order segments with no room to keep them
	Conflicts         uint64 // two copies of the same bytes that differed
	Malformed         uint64 // data commands and replies that did not parse
	PendingOverflow   uint64
	ChannelsOpened    uint64
	ChannelsRefused   uint64
	PinholesClosed    uint64
	PinholesConsumed  uint64 // closed by the kernel on the first packet of their connection
	SYNsHeld          uint64 // data SYNs the kernel held because they beat their pinhole (inline)
	SYNsAdmitted      uint64 // of those, admitted by ftpgate (their pinhole was open, never committed)
	SYNsRetried       uint64 // of those, sent back to the kernel, which holds their pinhole
	AddsCancelled     uint64 // pinholes used (a held SYN) or closed before their commit, never sent to the kernel
	CopiesLost        uint64 // NFLOG socket overflows (inline copies lost)
	BackendErrors     uint64
	LogSuppressed     uint64 // log lines held back by the per-session limits
	SessionsTracked   int    // now, half-open ones included
	HalfOpen          int    // now: control connections that have carried no FTP yet
	PinholesOpen      int    // now
}

// Tracker follows every FTP control session in the packets it is given
// and programs the backend. It is not safe for concurrent use: one
// goroutine feeds it packets and calls Commit and Expire.
type Tracker struct {
	env
	fw        rules.Backend
	policy    Policy
	controls  map[uint16]bool
	sessions  map[connKey]*Session
	halfOpen  int
	ended     map[connKey]time.Time // tombstones of ended control connections
	pinholes  map[rules.Pinhole]*pinhole
	closing   map[rules.Pinhole]*pinhole // closed in the kernel, log line pending
	retried   map[heldSYN]time.Time
	capWarned [3]time.Time
	dirty     bool // backend changes queued since the last Commit
	// peers counts the sessions of each pair of hosts, which the backend
	// holds as one element while the count is above zero.
	peers map[rules.Peers]int
	seg   segment // decoded packet, reused
	// Timers (Tick, Feed).
	nextExpire, dirtySince, lastFeedExpire time.Time
	snapshot                               atomic.Pointer[Stats]
}

// NewTracker returns a tracker that opens pinholes through fw.
func NewTracker(cfg Config, fw rules.Backend) *Tracker {
	cfg.setDefaults()
	t := &Tracker{
		env:      env{cfg: cfg, log: cfg.Logger},
		fw:       fw,
		policy:   Policy{MinDataPort: cfg.MinDataPort},
		controls: make(map[uint16]bool),
		sessions: make(map[connKey]*Session),
		ended:    make(map[connKey]time.Time),
		pinholes: make(map[rules.Pinhole]*pinhole),
		closing:  make(map[rules.Pinhole]*pinhole),
		retried:  make(map[heldSYN]time.Time),
		peers:    make(map[rules.Peers]int),
	}
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
	for _, x := range t.sessions {
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
		return
	}
	key := makeConnKey(seg.src, seg.dst)
	s := t.sessions[key]
	if s != nil && seg.has(flagSYN) && !seg.has(flagACK) && !s.closingAt.IsZero() && seg.seq+1 != s.h[fromClient].next {
		t.endSession(s, "control connection closed") // its ports are taken by a new one
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
		if t.halfOpen >= t.cfg.MaxHalfOpen {
			t.stats.HalfOpenRefused++
			t.warnCap(1, "half-open cap reached, not tracking new control connections until they carry FTP",
				"cap", t.cfg.MaxHalfOpen, "refused_so_far", t.stats.HalfOpenRefused)
			return nil
		}
		delete(t.ended, key)
		s := t.newSession(seg.src, seg.dst, true)
		s.halfOpen = true
		t.halfOpen++
		return s
	case len(seg.payload) > 0 && !seg.has(flagRST):
		if t.established() >= t.cfg.MaxSessions {
			t.refuseSession(key)
			return nil
		}
		// The side on a control port is the server.
		client, server := seg.src, seg.dst
		if t.controls[seg.src.Port()] && !t.controls[seg.dst.Port()] {
			client, server = seg.dst, seg.src
		}
		delete(t.ended, key)
		s := t.newSession(client, server, false)
		s.pickedUp = true
		t.establish(s)
		return s
	}
	return nil
}

func (t *Tracker) established() int { return len(t.sessions) - t.halfOpen }

func (t *Tracker) refuseSession(key connKey) {
	t.stats.SessionsRefused++
	t.tombstone(key)
	t.warnCap(0, "session cap reached, not tracking new control sessions",
		"cap", t.cfg.MaxSessions, "refused_so_far", t.stats.SessionsRefused)
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
	h := fnv.New64a()
	b, _ := client.MarshalBinary()
	h.Write(b)
	b, _ = server.MarshalBinary()
	h.Write(b)
	var tb [8]byte
	binary.BigEndian.PutUint64(tb[:], uint64(t.now.UnixNano()))
	h.Write(tb[:])
	id := "C" + base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(h.Sum(nil))[:12]
	s := &Session{ID: id, Client: client, Server: server, Start: t.now, Last: t.now, host: t, env: &t.env}
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
	t.sessions[makeConnKey(client, server)] = s
	pp := rules.Peers{Client: client.Addr(), Server: server.Addr()}
	if t.peers[pp]++; t.peers[pp] == 1 {
		t.dirty = true
		if err := t.fw.AddPeers(pp); err != nil {
			t.stats.BackendErrors++
			t.log.Error("adding control session peers", "peers", pp.String(), "error", err)
		}
	}
	return s
}

// establish is called when a session carries its first byte of FTP: it
// now counts against MaxSessions, not MaxHalfOpen.
func (t *Tracker) establish(s *Session) {
	if s.established {
		return
	}
	if s.halfOpen {
		if t.established() >= t.cfg.MaxSessions {
			t.refuseSession(makeConnKey(s.Client, s.Server))
			t.endSession(s, "session cap reached")
			return
		}
		s.halfOpen = false
		t.halfOpen--
	}
	s.established = true
	t.stats.SessionsStarted++
	t.log.Info("session start", "session", s.ID, "client", s.Client.String(), "server", s.Server.String(),
		"picked_up", s.pickedUp)
}

func (t *Tracker) endSession(s *Session, reason string) {
	if s.ended {
		return
	}
	s.end(reason)
	key := makeConnKey(s.Client, s.Server)
	delete(t.sessions, key)
	t.tombstone(key)
	pp := rules.Peers{Client: s.Client.Addr(), Server: s.Server.Addr()}
	if t.peers[pp]--; t.peers[pp] <= 0 {
		delete(t.peers, pp)
		t.dirty = true
		if err := t.fw.DelPeers(pp); err != nil {
			t.stats.BackendErrors++
			t.log.Error("removing control session peers", "peers", pp.String(), "error", err)
		}
	}
	if s.halfOpen {
		t.halfOpen--
	}
	if !s.established {
		return
	}
	t.stats.SessionsEnded++
	attrs := []any{"session", s.ID, "reason", reason, "duration", s.Last.Sub(s.Start).Round(time.Millisecond).String()}
	if s.limiter.suppressed > 0 {
		attrs = append(attrs, "log_lines_suppressed", s.limiter.suppressed)
		t.stats.LogSuppressed += uint64(s.limiter.suppressed)
	}
	t.log.Info("session end", attrs...)
}

// Expire ends idle sessions and those that carried no FTP in time, gives
// up on bytes overdue for reassembly, and forgets pinholes whose kernel
// timeout has passed. now is wall time for live capture, packet time for
// files.
func (t *Tracker) Expire(now time.Time) {
	if now.After(t.now) {
		t.now = now
	}
	for _, s := range t.sessions {
		switch {
		case !s.established && !now.Before(s.Start.Add(t.cfg.HandshakeTimeout)):
			t.stats.HalfOpenExpired++
			t.endSession(s, "no FTP within the handshake timeout")
		case !now.Before(s.Last.Add(t.cfg.IdleTimeout)):
			t.endSession(s, "control connection idle")
		case !s.closingAt.IsZero() && !now.Before(s.closingAt.Add(closeLinger)):
			t.endSession(s, "control connection closed")
		default:
			s.release(now)
		}
	}
	for k, at := range t.ended {
		if now.Sub(at) >= tombstoneFor {
			delete(t.ended, k)
		}
	}
	for k, at := range t.retried {
		if now.Sub(at) >= retriedFor {
			delete(t.retried, k)
		}
	}
	for k, p := range t.pinholes {
		if !now.Before(p.expires) {
			t.closePinhole(k, p, "timeout")
		}
	}
	t.logClosing(now, false)
}

// IsControl reports whether a raw IP packet is TCP to or from a control
// port.
func (t *Tracker) IsControl(data []byte) bool {
	var seg segment
	return decode(data, LinkTypeRawIP, &seg) == decodedTCP && (t.controls[seg.src.Port()] || t.controls[seg.dst.Port()])
}

// UsedReport takes the kernel's report of the first packet of a data
// connection that used a pinhole (its headers; the rest may be cut off).
func (t *Tracker) UsedReport(data []byte) {
	if key, ok := synKey(data); ok {
		t.PinholeConsumed(key)
	}
}

// CopiesLost takes the count of the times copies of control traffic were
// lost (the NFLOG socket overflowed) and warns when it grows.
func (t *Tracker) CopiesLost(n uint64) {
	if n != t.stats.CopiesLost {
		t.stats.CopiesLost = n
		t.warnCap(2, "copies of control traffic lost (NFLOG socket overflowed); sessions that lost bytes refuse active mode from then on",
			"overflows_so_far", n)
	}
}

// Tick runs the tracker's timers at now, wall time: expiry once a
// second, and the commit of pinhole changes at most CommitDelay after the
// first of them was queued. It returns when it wants to run next. It also
// publishes the counters for Snapshot.
//
// Inline, a client usually connects within the commit delay: its SYN is
// held, admitted from the pinhole table (AdmitHeldSYN), and the add is
// cancelled before the kernel ever saw it. Only pinholes not used that
// fast cost a commit, and then meet their SYN in the kernel.
func (t *Tracker) Tick(now time.Time) time.Time {
	if t.nextExpire.IsZero() {
		t.nextExpire = now.Add(time.Second)
	}
	if !now.Before(t.nextExpire) {
		t.Expire(now)
		t.nextExpire = now.Add(time.Second)
	}
	switch {
	case !t.dirty:
		t.dirtySince = time.Time{}
	case t.dirtySince.IsZero():
		t.dirtySince = now
	}
	if !t.dirtySince.IsZero() && !now.Before(t.dirtySince.Add(t.cfg.CommitDelay)) {
		t.dirtySince = time.Time{}
		if err := t.Commit(); err != nil {
			t.log.Error("committing pinholes", "error", err)
		}
	}
	t.publish()
	next := t.nextExpire
	if !t.dirtySince.IsZero() && t.dirtySince.Add(t.cfg.CommitDelay).Before(next) {
		next = t.dirtySince.Add(t.cfg.CommitDelay)
	}
	return next
}

// Feed takes one packet of a capture file and runs the timers by packet
// time: expiry once a second of it, and a commit after every packet.
func (t *Tracker) Feed(data []byte, link layers.LinkType, ts time.Time) error {
	t.HandlePacket(data, link, ts)
	if ts.Sub(t.lastFeedExpire) >= time.Second {
		if !t.lastFeedExpire.IsZero() {
			t.Expire(ts)
		}
		t.lastFeedExpire = ts
	}
	return t.Commit()
}

// Snapshot returns the counters as of the latest Tick. Unlike Stats, it
// may be called from any goroutine.
func (t *Tracker) Snapshot() Stats {
	if s := t.snapshot.Load(); s != nil {
		return *s
	}
	return Stats{}
}

func (t *Tracker) publish() {
	s := t.Stats()
	t.snapshot.Store(&s)
}

// CloseAll ends every session, closing every pinhole with reason, as on
// shutdown or at the end of a capture file.
func (t *Tracker) CloseAll(reason string) {
	// What was held back for bytes that never came is delivered first.
	t.draining = true
	for _, s := range t.sessions {
		s.release(t.now)
	}
	t.draining = false
	for _, s := range t.sessions {
		t.endSession(s, reason)
	}
	for k, p := range t.pinholes {
		t.closePinhole(k, p, reason)
	}
	t.logClosing(t.now, true)
}

// CommitPeers applies the queued changes of control session peers only:
// a control SYN waits for its peers, not for the pinholes queued with
// them, which keep their commit delay.
func (t *Tracker) CommitPeers() error {
	err := t.fw.CommitPeers()
	if err != nil {
		t.stats.BackendErrors++
		t.log.Error("committing control session peers", "error", err)
	}
	return err
}

// Commit applies the pinhole changes queued since the last Commit in one
// batch. Callers commit after each batch of packets they read.
func (t *Tracker) Commit() error {
	t.dirty = false
	err := t.fw.Commit()
	if err != nil {
		t.stats.BackendErrors++
	}
	return err
}
