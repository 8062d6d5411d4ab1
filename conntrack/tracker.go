// Package conntrack turns captured packets into FTP control sessions and
// their announced data channels: decoding, TCP reassembly per direction,
// the control-session state machine, and the policy that accepts or
// refuses each channel before a pinhole is opened.
package conntrack

import (
	"context"
	"encoding/base32"
	"encoding/binary"
	"hash/fnv"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/reassembly"

	"github.com/ftpgate/ftpgate/rules"
)

// DefaultCommitDelay is how long a new pinhole waits, under inline
// capture, before it is committed. Most data SYNs come within it and are
// admitted from ftpgate's own table (see RunInline); on the lab, going
// from 2 ms to 10 ms cut ftpgate's CPU per transfer by 10-15%.
const DefaultCommitDelay = 10 * time.Millisecond

// Config holds the tracker's limits and policy. Zero values take the
// defaults named on each field.
type Config struct {
	ControlPorts          []uint16      // default [21]
	MinDataPort           uint16        // default 1024
	PinholeTimeout        time.Duration // default 60s
	IdleTimeout           time.Duration // control session idle limit, default 30m
	MaxSessions           int           // tracked control sessions, default 65536
	MaxPinholesPerSession int           // default 4
	MaxPinholes           int           // in all, default 65536
	MaxLineLength         int           // bytes, default 2048
	// MaxBufferedPages bounds out-of-order data held for reassembly, per
	// connection (default 16 pages of 1900 bytes) and in all (default
	// 16384). Past the limit the gap is skipped and counted.
	MaxBufferedPagesPerConnection int
	MaxBufferedPagesTotal         int
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
	if c.MaxSessions == 0 {
		c.MaxSessions = 65536
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
	if c.MaxBufferedPagesPerConnection == 0 {
		c.MaxBufferedPagesPerConnection = 16
	}
	if c.MaxBufferedPagesTotal == 0 {
		c.MaxBufferedPagesTotal = 16384
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
	Packets          uint64 // packets handed to the tracker
	NotControl       uint64 // not TCP to or from a control port
	Undecodable      uint64 // truncated or unknown link/network layers
	Fragments        uint64 // IP fragments (control traffic is never fragmented in practice)
	SessionsStarted  uint64
	SessionsEnded    uint64
	SessionsRefused  uint64 // a new session found the session cap reached
	Lines            uint64
	LinesTooLong     uint64
	GapBytes         uint64 // bytes lost in reassembly (buffer limits, missing segments)
	Malformed        uint64 // data commands and replies that did not parse
	PendingOverflow  uint64
	ChannelsOpened   uint64
	ChannelsRefused  uint64
	PinholesClosed   uint64
	PinholesConsumed uint64 // closed by the kernel on the first packet of their connection
	SYNsHeld         uint64 // data SYNs the kernel held because they beat their pinhole (inline)
	SYNsAdmitted     uint64 // of those, admitted by ftpgate (their pinhole was open)
	AddsCancelled    uint64 // pinholes used (a held SYN) or closed before their commit, never sent to the kernel
	CopiesLost       uint64 // NFLOG socket overflows (inline copies lost)
	BackendErrors    uint64
	SessionsTracked  int // now
	PinholesOpen     int // now
}

// pinhole is an open pinhole and the session that asked for it.
type pinhole struct {
	key     rules.Pinhole
	session *Session
	channel Channel
	expires time.Time
	// fresh: no element of this key was in the kernel when it opened,
	// so an add not yet committed can simply be cancelled.
	fresh bool
	// Set once closed while its log line waits for a usage report.
	closeReason string
	logBy       time.Time
}

// Tracker follows every FTP control session in the packets it is given
// and programs the backend. It is not safe for concurrent use: one
// goroutine feeds it packets and calls Commit and Expire.
type Tracker struct {
	cfg       Config
	fw        rules.Backend
	policy    Policy
	log       *slog.Logger
	controls  map[uint16]bool
	sessions  map[connKey]*Session
	pinholes  map[rules.Pinhole]*pinhole
	closing   map[rules.Pinhole]*pinhole // closed in the kernel, log line pending
	assembler *reassembly.Assembler
	decoder   decoder
	stats     Stats
	now       time.Time
	capWarned time.Time
	lingering int // ended sessions still held by reassembly (see stream.Accept)
	// reused holds the 4-tuples whose last connection was reset while
	// reassembly still holds it; see flowFor.
	reused map[connKey]*reuse
	dirty  bool // backend changes queued since the last Commit
	// peers counts the sessions of each pair of hosts, which the backend
	// holds as one element while the count is above zero.
	peers map[rules.Peers]int
}

// NewTracker returns a tracker that opens pinholes through fw.
func NewTracker(cfg Config, fw rules.Backend) *Tracker {
	cfg.setDefaults()
	t := &Tracker{
		cfg:      cfg,
		fw:       fw,
		policy:   Policy{MinDataPort: cfg.MinDataPort},
		log:      cfg.Logger,
		controls: make(map[uint16]bool),
		sessions: make(map[connKey]*Session),
		pinholes: make(map[rules.Pinhole]*pinhole),
		closing:  make(map[rules.Pinhole]*pinhole),
		reused:   make(map[connKey]*reuse),
		peers:    make(map[rules.Peers]int),
	}
	for _, p := range cfg.ControlPorts {
		t.controls[p] = true
	}
	pool := reassembly.NewStreamPool(&streamFactory{t: t})
	t.assembler = reassembly.NewAssembler(pool)
	t.assembler.MaxBufferedPagesPerConnection = cfg.MaxBufferedPagesPerConnection
	t.assembler.MaxBufferedPagesTotal = cfg.MaxBufferedPagesTotal
	t.decoder.init()
	return t
}

// Stats returns the counters.
func (t *Tracker) Stats() Stats {
	s := t.stats
	s.SessionsTracked = len(t.sessions)
	s.PinholesOpen = len(t.pinholes)
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
// feeds it to reassembly. It never panics on hostile input.
func (t *Tracker) HandlePacket(data []byte, link layers.LinkType, ci gopacket.CaptureInfo) {
	t.stats.Packets++
	if ci.Timestamp.After(t.now) {
		t.now = ci.Timestamp
	}
	pkt, ok := t.decoder.decode(data, link)
	if !ok {
		t.stats.Undecodable++
		return
	}
	if pkt.fragment {
		t.stats.Fragments++
		return
	}
	tcp := pkt.tcp
	if !t.controls[uint16(tcp.SrcPort)] && !t.controls[uint16(tcp.DstPort)] {
		t.stats.NotControl++
		return
	}
	key := makeConnKey(netip.AddrPortFrom(pkt.src, uint16(tcp.SrcPort)), netip.AddrPortFrom(pkt.dst, uint16(tcp.DstPort)))
	if _, known := t.sessions[key]; !known {
		// Only a SYN or a segment with data starts tracking: bare ACKs,
		// FINs and RSTs of connections that already ended must not
		// resurrect them.
		if !tcp.SYN && len(tcp.Payload) == 0 {
			return
		}
		if len(t.sessions)+t.lingering >= t.cfg.MaxSessions {
			t.stats.SessionsRefused++
			if ci.Timestamp.Sub(t.capWarned) > 10*time.Second {
				t.capWarned = ci.Timestamp
				t.log.Warn("session cap reached, not tracking new control sessions",
					"cap", t.cfg.MaxSessions, "refused_so_far", t.stats.SessionsRefused)
			}
			return
		}
	}
	ctx := assemblerContext{ci: ci}
	t.assembler.AssembleWithContext(t.flowFor(key, pkt.netFlow, tcp), tcp, &ctx)
}

// reuse tracks a 4-tuple whose connection was reset. Reassembly keeps a
// reset connection until its other half closes or idles out, and would
// hand a new connection on the same 4-tuple to the dead one. A new SYN
// on such a tuple therefore gets a new generation, carried in the flow's
// endpoint type, which reassembly treats as a different key.
type reuse struct {
	gen       uint32
	lingering int // reset connections of this tuple still in reassembly
}

// genEndpointBase keeps generation endpoint types clear of gopacket's own.
const genEndpointBase = gopacket.EndpointType(1 << 20)

func (t *Tracker) flowFor(key connKey, flow gopacket.Flow, tcp *layers.TCP) gopacket.Flow {
	r, ok := t.reused[key]
	if !ok {
		return flow
	}
	if _, live := t.sessions[key]; !live && tcp.SYN && !tcp.ACK {
		r.gen++
	}
	if r.gen == 0 {
		return flow
	}
	return gopacket.NewFlow(genEndpointBase+gopacket.EndpointType(r.gen), flow.Src().Raw(), flow.Dst().Raw())
}

// forgetReuse drops the generation of a tuple nobody uses any more.
func (t *Tracker) forgetReuse(key connKey) {
	if r, ok := t.reused[key]; ok && r.lingering == 0 {
		if _, live := t.sessions[key]; !live {
			delete(t.reused, key)
		}
	}
}

// Expire ends idle sessions, pushes through reassembly gaps older than a
// few seconds, and forgets pinholes whose kernel timeout has passed. now
// is wall time for live capture, packet time for files.
func (t *Tracker) Expire(now time.Time) {
	if now.After(t.now) {
		t.now = now
	}
	t.assembler.FlushWithOptions(reassembly.FlushOptions{
		T:  now.Add(-3 * time.Second),
		TC: now.Add(-t.cfg.IdleTimeout),
	})
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
	pkt, ok := t.decoder.decode(data, LinkTypeRawIP)
	return ok && !pkt.fragment && (t.controls[uint16(pkt.tcp.SrcPort)] || t.controls[uint16(pkt.tcp.DstPort)])
}

// AdmitHeldSYN decides on a data SYN (a raw IP packet) that the kernel
// held because it found no pinhole: true if its pinhole is open now. The
// pinhole is then used up here, as the kernel's consume rule would have:
// closed, removed from the backend at the next Commit, and logged as
// used. false lets the SYN go on to the admin's rules. Call it after the
// copies logged before the SYN have been handled.
func (t *Tracker) AdmitHeldSYN(data []byte) bool {
	t.stats.SYNsHeld++
	pkt, ok := t.decoder.decode(data, LinkTypeRawIP)
	if !ok || pkt.fragment || !pkt.tcp.SYN || pkt.tcp.ACK {
		return false
	}
	key := rules.Pinhole{Peer: pkt.src, Addr: pkt.dst, Port: uint16(pkt.tcp.DstPort)}
	p, open := t.pinholes[key]
	if !open {
		return false
	}
	delete(t.pinholes, key)
	t.removeFromBackend(p)
	t.dropFromSession(p)
	t.stats.SYNsAdmitted++
	t.stats.PinholesConsumed++
	t.logClosed(p, "data connection started")
	return true
}

// HandleLog handles one record of ftpgate's NFLOG group: a copied control
// segment, or the report of a used pinhole.
func (t *Tracker) HandleLog(r rules.LogRecord, ts time.Time) {
	if string(r.Prefix) == rules.LogPrefixUsed {
		if p, ok := rules.PinholeOfPacket(r.Payload); ok {
			t.PinholeConsumed(p)
		}
		return
	}
	if len(r.Prefix) != 0 {
		return
	}
	t.HandlePacket(r.Payload, LinkTypeRawIP, gopacket.CaptureInfo{Timestamp: ts, CaptureLength: len(r.Payload), Length: len(r.Payload)})
}

// logClosing writes the pending log lines of closed pinholes whose report
// window has passed, or all of them.
func (t *Tracker) logClosing(now time.Time, all bool) {
	for k, p := range t.closing {
		if all || !now.Before(p.logBy) {
			delete(t.closing, k)
			t.logClosed(p, p.closeReason)
		}
	}
}

// CloseAll ends every session, closing every pinhole with reason, as on
// shutdown or at the end of a capture file.
func (t *Tracker) CloseAll(reason string) {
	for _, s := range t.sessions {
		t.endSession(s, reason)
	}
	clear(t.sessions)
	for k, p := range t.pinholes {
		t.closePinhole(k, p, reason)
	}
	t.logClosing(t.now, true)
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

func (t *Tracker) newSession(client, server netip.AddrPort, ts time.Time) *Session {
	h := fnv.New64a()
	b, _ := client.MarshalBinary()
	h.Write(b)
	b, _ = server.MarshalBinary()
	h.Write(b)
	var tb [8]byte
	binary.BigEndian.PutUint64(tb[:], uint64(ts.UnixNano()))
	h.Write(tb[:])
	id := "C" + base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(h.Sum(nil))[:12]
	s := &Session{ID: id, Client: client, Server: server, Start: ts, Last: ts, tracker: t}
	for d := range s.lines {
		s.lines[d].max = t.cfg.MaxLineLength
	}
	t.sessions[makeConnKey(client, server)] = s
	t.stats.SessionsStarted++
	pp := rules.Peers{Client: client.Addr(), Server: server.Addr()}
	if t.peers[pp]++; t.peers[pp] == 1 {
		t.dirty = true
		if err := t.fw.AddPeers(pp); err != nil {
			t.stats.BackendErrors++
			t.log.Error("adding control session peers", "peers", pp.String(), "error", err)
		}
	}
	t.log.Info("session start", "session", id, "client", client.String(), "server", server.String())
	return s
}

func (t *Tracker) endSession(s *Session, reason string) {
	if s.ended {
		return
	}
	s.end(reason)
	delete(t.sessions, makeConnKey(s.Client, s.Server))
	t.stats.SessionsEnded++
	pp := rules.Peers{Client: s.Client.Addr(), Server: s.Server.Addr()}
	if t.peers[pp]--; t.peers[pp] <= 0 {
		delete(t.peers, pp)
		t.dirty = true
		if err := t.fw.DelPeers(pp); err != nil {
			t.stats.BackendErrors++
			t.log.Error("removing control session peers", "peers", pp.String(), "error", err)
		}
	}
	t.log.Info("session end", "session", s.ID, "reason", reason,
		"duration", s.Last.Sub(s.Start).Round(time.Millisecond).String())
}

// decide asks the policy and the caps about a channel the protocol
// allows, and opens its pinhole or refuses it.
func (t *Tracker) decide(s *Session, ch Channel, announcer netip.Addr) {
	if reason := t.policy.Check(ch, announcer); reason != "" {
		t.refuse(s, ch, reason)
		return
	}
	key := ch.Pinhole()
	_, replaced := t.pinholes[key]
	if old, ok := t.pinholes[key]; ok {
		// The same hole again (a server reusing its passive port): it
		// now belongs to this announcement.
		t.dropFromSession(old)
		delete(t.pinholes, key)
	}
	switch {
	case len(s.pinholes) >= t.cfg.MaxPinholesPerSession:
		t.refuse(s, ch, "session has reached its pinhole cap")
		return
	case len(t.pinholes) >= t.cfg.MaxPinholes:
		t.refuse(s, ch, "pinhole cap reached for the whole gateway")
		return
	}
	t.dirty = true
	if err := t.fw.AddPinhole(key, t.cfg.PinholeTimeout); err != nil {
		t.stats.BackendErrors++
		t.refuse(s, ch, "firewall backend: "+err.Error())
		return
	}
	_, closing := t.closing[key]
	p := &pinhole{key: key, session: s, channel: ch, expires: ch.Time.Add(t.cfg.PinholeTimeout), fresh: !replaced && !closing}
	if t.now.After(ch.Time) {
		p.expires = t.now.Add(t.cfg.PinholeTimeout)
	}
	t.pinholes[key] = p
	s.pinholes = append(s.pinholes, p)
	ch.Verdict = VerdictOpen
	ch.Reason = acceptReason(ch)
	t.stats.ChannelsOpened++
	t.logChannel(slog.LevelInfo, "channel open", ch)
	if t.cfg.OnChannel != nil {
		t.cfg.OnChannel(ch)
	}
}

func acceptReason(ch Channel) string {
	if ch.Passive {
		return "reply to the client's " + ch.Command.String()
	}
	return ch.Command.String() + " accepted by the server"
}

func (t *Tracker) refuse(s *Session, ch Channel, reason string) {
	ch.Verdict = VerdictRefuse
	ch.Reason = reason
	t.stats.ChannelsRefused++
	t.logChannel(slog.LevelWarn, "channel refused", ch)
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
	return []any{
		"session", ch.Session, "command", ch.Command.String(), "passive", ch.Passive,
		"orig_h", ch.OrigH.String(), "resp_h", ch.RespH.String(), "resp_p", ch.RespP,
		"reason", ch.Reason,
	}
}

// PinholeConsumed records that the kernel removed p because its data
// connection started. Reports of pinholes ftpgate no longer tracks (a
// retransmitted report, or one closed meanwhile) are ignored.
func (t *Tracker) PinholeConsumed(key rules.Pinhole) {
	if p, ok := t.closing[key]; ok {
		// Closed for a session reason meanwhile, but it had been used:
		// the report says why it really closed.
		delete(t.closing, key)
		t.stats.PinholesConsumed++
		t.logClosed(p, "data connection started")
		return
	}
	p, ok := t.pinholes[key]
	if !ok {
		return
	}
	delete(t.pinholes, key)
	t.dropFromSession(p)
	t.stats.PinholesConsumed++
	t.logClosed(p, "data connection started")
}

// closeSessionPinholes closes every open pinhole of s.
func (t *Tracker) closeSessionPinholes(s *Session, reason string) {
	for len(s.pinholes) > 0 {
		p := s.pinholes[0]
		t.closePinhole(p.key, p, reason)
	}
}

func (t *Tracker) closePinhole(key rules.Pinhole, p *pinhole, reason string) {
	if cur, ok := t.pinholes[key]; ok && cur == p {
		delete(t.pinholes, key)
		t.removeFromBackend(p)
	}
	t.dropFromSession(p)
	t.stats.PinholesClosed++
	if t.cfg.ReportWindow > 0 {
		p.closeReason, p.logBy = reason, t.now.Add(t.cfg.ReportWindow)
		if old, ok := t.closing[key]; ok && old != p {
			t.logClosed(old, old.closeReason)
		}
		t.closing[key] = p
		return
	}
	t.logClosed(p, reason)
}

// removeFromBackend takes p's element out of the kernel: an add still
// waiting for its commit is cancelled, so the kernel never sees it;
// anything else is deleted at the next Commit.
func (t *Tracker) removeFromBackend(p *pinhole) {
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

func (t *Tracker) logClosed(p *pinhole, reason string) {
	if !t.log.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	t.log.Info("channel closed", "session", p.channel.Session, "command", p.channel.Command.String(),
		"orig_h", p.key.Peer.String(), "resp_h", p.key.Addr.String(), "resp_p", p.key.Port, "reason", reason)
}

func (t *Tracker) dropFromSession(p *pinhole) {
	s := p.session
	if i := slices.Index(s.pinholes, p); i >= 0 {
		s.pinholes = slices.Delete(s.pinholes, i, i+1)
	}
}
