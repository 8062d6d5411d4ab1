package conntrack

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/ftpgate/ftpgate/internal/source"
	"github.com/ftpgate/ftpgate/parser"
	"github.com/ftpgate/ftpgate/rules"
)

// Translation is what the admin's NAT rules did to one control
// connection, as the control proxy learnt it from the kernel.
type Translation struct {
	// Client and Server are the two ends as they are: the client's own
	// address, and the server's after destination NAT.
	Client, Server netip.AddrPort
	// ServerSeen is the server as the client addressed it (before
	// destination NAT); ClientSeen the client as the server sees it
	// (after source NAT).
	ServerSeen, ClientSeen netip.AddrPort
}

// Translated reports whether either end sees the other under another
// address.
func (tr Translation) Translated() bool {
	return tr.ClientSeen.Addr() != tr.Client.Addr() || tr.ServerSeen.Addr() != tr.Server.Addr()
}

// natSession is the part of a Session that runs through the control
// proxy: it is fed the bytes the proxy reads, both ways, and what it
// sends on may differ from what it read (see Tracker.ProxiedBytes).
type natSession struct {
	id uint64
	tr Translation
	in [2]uint32 // bytes read so far, per direction: their sequence numbers
	// out is what goes on for the bytes of the call being handled, per
	// direction (each direction's relay waits for its own).
	out [2][]byte
	// rewrite is set while a line is handled: what to send instead.
	rewrite []byte
	// held: lines of a multi-line reply that announces an address, sent
	// with its last line (which may be rewritten whole).
	held       []byte
	scratch    []byte
	serverSeen bool      // the server has sent something
	closingAt  time.Time // one side has closed
}

// maxHeldReply bounds the multi-line announcement reply held back: a
// reply that long is sent on as it is.
func (t *Tracker) maxHeldReply() int { return 4 * t.cfg.MaxLineLength }

// send appends bytes to what goes on in direction d, after any lines
// held before them, so that nothing goes on out of order.
func (n *natSession) send(d int, b []byte) {
	if d == fromServer && len(n.held) > 0 {
		n.out[d] = append(n.out[d], n.held...)
		n.held = n.held[:0]
	}
	n.out[d] = append(n.out[d], b...)
}

// lineDone sends on one line the session has handled: as it came, or
// rewritten; a line of a multi-line announcement reply waits for the
// reply's last line. holding says the reply is still open.
func (n *natSession) lineDone(d int, l line, holding bool, limit int) {
	n.scratch = n.scratch[:0]
	if l.tooLong {
		return // its bytes went on as they came (lineSplitter.pass)
	}
	var b []byte
	switch {
	case l.blanks > 0:
		b = l.text
	case n.rewrite != nil:
		b, n.rewrite = n.rewrite, nil
		if d == fromServer {
			n.held = n.held[:0] // a rewritten reply replaces the lines before
		}
	default:
		n.scratch = rawLine(n.scratch, l)
		b = n.scratch
	}
	if d == fromServer && (holding || len(n.held) > 0) {
		n.held = append(n.held, b...)
		if holding && len(n.held) <= limit {
			return
		}
		n.send(d, nil) // the held lines, this one last among them
		return
	}
	n.send(d, b)
}

// rawLine is a line as it came: its text and its line end.
func rawLine(buf []byte, l line) []byte {
	buf = append(buf, l.text...)
	if l.crlf {
		return append(buf, '\r', '\n')
	}
	return append(buf, '\n')
}

// heldBytes is how many bytes of direction d the session holds back.
func (s *Session) heldBytes(d int) int {
	n := s.lines[d].held()
	if d == fromServer {
		n += len(s.nat.held)
	}
	return n
}

// natPorts hands out the public ports of mappings from the range ftpgate
// owns (Config.NATPorts), at random, never one a live mapping holds nor
// one the gateway itself listens on or the admin's rules forward
// (Config.PublicPortInUse), and no more to one client (per address, per
// /64 for IPv6) than its share.
type natPorts struct {
	lo, hi   uint16
	used     map[netip.AddrPort]int // public address:port -> live plans and mappings on it
	inUse    func(netip.AddrPort) bool
	bySource source.Shares
	share    int
}

// maxPortChecks bounds the ports one pick asks PublicPortInUse about:
// when the range reads as taken, an announcement is refused, not paid for
// with a sweep.
const maxPortChecks = 16

// pick returns a free port of the range on addr for a client of src, or
// why there is none. Random picks first, so that ports are not guessable
// in order; a sweep from a random point then finds the last free ones.
func (np *natPorts) pick(addr netip.Addr, src netip.Prefix) (uint16, string) {
	n := int(np.hi) - int(np.lo) + 1
	if n <= 0 {
		return 0, "the range is empty"
	}
	if np.bySource[src] >= np.share {
		return 0, fmt.Sprintf("this client holds its share of %d public ports", np.share)
	}
	checks := 0
	free := func(p uint16) bool {
		ap := netip.AddrPortFrom(addr, p)
		if np.used[ap] != 0 || checks >= maxPortChecks {
			return false
		}
		checks++
		return np.inUse == nil || !np.inUse(ap)
	}
	for range 32 {
		if p := np.lo + uint16(rand.IntN(n)); free(p) {
			return p, ""
		}
	}
	start := rand.IntN(n)
	for i := range n {
		if p := np.lo + uint16((start+i)%n); free(p) {
			return p, ""
		}
		if checks >= maxPortChecks {
			return 0, fmt.Sprintf("the %d ports tried are all taken (this host listens on them, or your rules forward them)", checks)
		}
	}
	return 0, "every port is held by a live mapping"
}

func (np *natPorts) hold(ap netip.AddrPort, src netip.Prefix) {
	np.used[ap]++
	np.bySource.Add(src)
}

func (np *natPorts) release(ap netip.AddrPort, src netip.Prefix) {
	if !ap.IsValid() {
		return
	}
	if np.used[ap]--; np.used[ap] <= 0 {
		delete(np.used, ap)
	}
	np.bySource.Remove(src)
}

// natPlan is how one announcement on a proxied session is carried
// through the gateway.
type natPlan struct {
	pinhole rules.Pinhole // the data connection as the forward hook sees it
	maps    []rules.Mapping
	public  netip.AddrPort // the mapped public address:port, held in natPorts, if any
	source  netip.Prefix   // the client whose share it counts against
	line    []byte         // the line the far side gets instead, if rewritten
	// For active mode, decided when the server answers:
	channel Channel
	timeout time.Duration
}

// describe adds to ch what the far side is told and where its data
// connection goes.
func (p natPlan) describe(ch Channel) Channel {
	if p.public.IsValid() {
		ch.Sent = p.public
	}
	if len(p.maps) > 0 {
		ch.MappedTo = netip.AddrPortFrom(p.pinhole.Addr, p.pinhole.Port)
	}
	return ch
}

// planNAT works out the pinhole, the mappings and the rewrite for an
// announcement the policy accepted on a proxied session.
//
// The data connection must end at the announcer's own address (inside)
// whatever the far side is told. When the announcer's address differs on
// the far side (seen), the far side connects to seen on a port ftpgate
// picks from --nat-ports, and a DNAT mapping sends that port to inside
// and the announced port; the line the far side gets is rewritten to
// say so, whatever address it named (the inside address, the seen one
// as a server's pasv_address writes it, or none, as in 229). The public
// port is never one the announcer chose: a port of the gateway's own, or
// one the admin's rules forward elsewhere, must stay what it is. In
// active mode through destination NAT, an SNAT mapping makes the
// server's data connection come from the address the client connected
// to.
func (t *Tracker) planNAT(s *Session, ch Channel, code int) (natPlan, RefusalKind, string) {
	tr := s.nat.tr
	peer, inside, seen := tr.Server.Addr(), tr.Client.Addr(), tr.ClientSeen.Addr()
	if ch.Passive {
		peer, inside, seen = tr.Client.Addr(), tr.Server.Addr(), tr.ServerSeen.Addr()
	}
	plan := natPlan{pinhole: rules.Pinhole{Peer: peer, Addr: inside, Port: ch.RespP}}
	if seen != inside {
		src := source.Of(s.Client.Addr())
		port, why := t.nat.pick(seen, src)
		if why != "" {
			return natPlan{}, refusedNAT, fmt.Sprintf("no free NAT port on %s in %d-%d: %s", seen, t.nat.lo, t.nat.hi, why)
		}
		public := netip.AddrPortFrom(seen, port)
		line, err := rewriteLine(ch.Command, code, public)
		if err != nil {
			return natPlan{}, refusedNAT, "cannot rewrite the announcement for the far side of the NAT: " + err.Error()
		}
		t.nat.hold(public, src)
		plan.public, plan.line, plan.source = public, line, src
		plan.maps = append(plan.maps, rules.Mapping{Peer: peer, Addr: seen, Port: port, ToAddr: inside, ToPort: ch.RespP})
	}
	if !ch.Passive && tr.ServerSeen.Addr() != tr.Server.Addr() {
		plan.maps = append(plan.maps, rules.Mapping{SNAT: true, Peer: peer, Addr: inside, Port: ch.RespP, ToAddr: tr.ServerSeen.Addr()})
	}
	return plan, 0, ""
}

// rewriteLine regenerates the announcement for the far side.
func rewriteLine(verb parser.Verb, code int, to netip.AddrPort) ([]byte, error) {
	var b []byte
	var err error
	switch {
	case code == 227:
		b, err = parser.Append227(nil, to)
	case code == 229:
		b, err = parser.Append229(nil, to.Port())
	case code == 0 && verb == parser.VerbPORT:
		b, err = parser.AppendPORT(nil, to)
	case code == 0 && verb == parser.VerbEPRT:
		b, err = parser.AppendEPRT(nil, to)
	default:
		return nil, fmt.Errorf("%s cannot be rewritten", verb)
	}
	if err != nil {
		return nil, err
	}
	return append(b, '\r', '\n'), nil
}

// planActive plans an active-mode announcement of a proxied session, as
// the client sends it: the line the server gets is rewritten now, with a
// public port held for it, but nothing reaches the kernel before the
// server has accepted the command (plannedReply). Until then the far
// side has nothing to connect to.
func (t *Tracker) planActive(s *Session, ch Channel) *natPlan {
	kind, why, pol, timeout := t.serverPolicy(s, ch)
	if why == "" {
		kind, why = t.checkNAT(s, ch, pol)
	}
	if why == "" && s.pair.distrusted != "" {
		kind, why = refusedActiveDistrusted, "active mode refused on this session: "+s.pair.distrusted
	}
	if why != "" {
		t.refuse(s, ch, kind, why)
		return nil
	}
	plan, kind, why := t.planNAT(s, ch, 0)
	if why != "" {
		t.refuse(s, ch, kind, why)
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
func (t *Tracker) plannedReply(s *Session, cmd pendingCommand, code int) {
	plan := cmd.plan
	switch {
	case code >= 300:
		t.dropPlanned(s, cmd, refusedByServer, fmt.Sprintf("server refused %s with %d", cmd.verb, code))
	case s.pair.distrusted != "":
		t.dropPlanned(s, cmd, refusedActiveDistrusted, "active mode refused on this session: "+s.pair.distrusted)
	default:
		// The configuration may have changed since the line went on.
		if why := t.disallows(s, plan.channel); why != "" {
			t.dropPlanned(s, cmd, refusedNotServed, "the reloaded configuration no longer allows it: "+why)
			return
		}
		t.open(s, plan.channel, plan.pinhole, *plan, plan.timeout)
	}
}

// dropPlanned refuses a planned announcement and gives its port back.
func (t *Tracker) dropPlanned(s *Session, cmd pendingCommand, kind RefusalKind, reason string) {
	t.nat.release(cmd.plan.public, cmd.plan.source)
	t.refuse(s, cmd.plan.channel, kind, reason)
}

// OpenProxied starts the session of a control connection the control
// proxy took over. A half-open session of the same connection, from the
// SYN the gateway dropped to hand it over, ends.
func (t *Tracker) OpenProxied(id uint64, tr Translation, now time.Time) {
	if now.After(t.now) {
		t.now = now
	}
	if _, dup := t.proxied[id]; dup {
		return
	}
	if old := t.sessions[makeConnKey(tr.Client, tr.Server)]; old != nil && !old.established {
		t.endSession(old, closedOther, "handed to the control proxy")
	}
	s := &Session{ID: t.sessionID(tr.Client, tr.Server), Client: tr.Client, Server: tr.Server,
		Start: t.now, Last: t.now, host: t, env: &t.env, nat: &natSession{id: id, tr: tr}}
	s.pair.inStep, s.pair.greeting = true, true
	s.established = true
	for d := range s.lines {
		s.lines[d].max = t.cfg.MaxLineLength
		s.lines[d].pass = func(b []byte) { s.nat.send(d, b) }
	}
	t.proxied[id] = s
	t.stats.SessionsStarted++
	t.stats.SessionsProxied++
	t.log.Info("session start", "session", s.ID, "client", tr.Client.String(), "server", tr.Server.String(),
		"proxied", true, "client_seen_as", tr.ClientSeen.Addr().String(), "server_seen_as", tr.ServerSeen.String(),
		"translated", tr.Translated())
	if t.isImplicit(tr.Server.Port()) {
		// Implicit FTPS: encrypted from the first byte; its range opens
		// once the handshake has completed.
		s.implicit = true
		s.startTLS()
	}
}

// ProxiedBytes takes bytes the control proxy read on session id from one
// side, in order, and returns what to send on to the other side now:
// the same bytes, or lines rewritten, or less (the end of a line still
// to come, the lines of a multi-line reply held for its last). ack is
// how many bytes of the other side the proxy had sent on when it read
// these: the most the sender can have received when it wrote them.
// through is how many bytes of this side have gone on in all (as they
// came or rewritten), which the proxy gives as ack for the other side.
//
// What a line made ftpgate open must be committed before out is sent
// (Commit): the far side may connect the moment it reads it. closed
// says the session is gone and the connection must close.
func (t *Tracker) ProxiedBytes(id uint64, fromServer bool, data []byte, ack uint32, now time.Time) (out []byte, through uint32, closed bool) {
	s := t.proxied[id]
	if s == nil || s.ended {
		return nil, 0, true
	}
	if now.After(t.now) {
		t.now = now
	}
	d := fromClient
	if fromServer {
		d = 1
		s.nat.serverSeen = true
	}
	n := s.nat
	n.out[d] = n.out[d][:0]
	seq := n.in[d]
	n.in[d] += uint32(len(data))
	s.Last = t.now
	s.bytes(d, seq, data, ack, t.now)
	if s.ended {
		return nil, 0, true
	}
	return n.out[d], n.in[d] - uint32(s.heldBytes(d)), false
}

// ProxiedEOF says one side of a proxied connection has closed: the
// session ends when the other closes too, or closeLinger later.
func (t *Tracker) ProxiedEOF(id uint64, fromServer bool, now time.Time) {
	if s := t.proxied[id]; s != nil && s.nat.closingAt.IsZero() {
		s.nat.closingAt = now
	}
}

// CloseProxied ends the session of a proxied connection that closed.
func (t *Tracker) CloseProxied(id uint64, reason string, now time.Time) {
	s := t.proxied[id]
	if s == nil {
		return
	}
	if now.After(t.now) {
		t.now = now
	}
	t.endProxied(s, closedSessionClosed, reason, false)
}

// endProxied ends a proxied session; close says the proxy must still be
// told to close its connection.
func (t *Tracker) endProxied(s *Session, kind CloseKind, reason string, close bool) {
	if s.ended {
		return
	}
	s.end(kind, reason)
	delete(t.proxied, s.nat.id)
	t.stats.SessionsEnded++
	attrs := []any{"session", s.ID, "reason", reason, "duration", s.Last.Sub(s.Start).Round(time.Millisecond).String(), "proxied", true}
	if s.limiter.suppressed > 0 {
		attrs = append(attrs, "log_lines_suppressed", s.limiter.suppressed)
		t.stats.LogSuppressed += uint64(s.limiter.suppressed)
	}
	t.log.Info("session end", attrs...)
	if close && t.cfg.OnProxiedEnd != nil {
		t.cfg.OnProxiedEnd(s.nat.id)
	}
}

// expireProxied ends proxied sessions whose server never spoke, that
// went idle, or whose other side never closed: whatever their state,
// none outlives the timeouts.
func (t *Tracker) expireProxied(now time.Time) {
	for _, s := range t.proxied {
		n := s.nat
		switch {
		case !n.serverSeen && !now.Before(s.Start.Add(t.cfg.HandshakeTimeout)):
			t.stats.HalfOpenExpired++
			t.endProxied(s, closedSessionClosed, "no FTP from the server within the handshake timeout", true)
		case !now.Before(s.Last.Add(t.cfg.IdleTimeout)):
			t.endProxied(s, closedSessionIdle, "control connection idle", true)
		case !n.closingAt.IsZero() && !now.Before(n.closingAt.Add(closeLinger)):
			t.endProxied(s, closedSessionClosed, "control connection closed", true)
		default:
			t.expireScoped(s, now)
		}
	}
}
