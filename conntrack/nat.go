package conntrack

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"

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
// proxy: it reads whole lines in order, both ways, from kernel sockets,
// and what it sends on may differ from what it read.
type natSession struct {
	id        uint64
	tr        Translation
	clientOff uint32 // bytes of client lines read so far
	serverOff uint32
	rewrite   []byte // set while a line is handled: what to send instead
	held      []byte // lines of a multi-line reply, sent with its last line
}

// natPorts hands out the public ports of mappings from the range ftpgate
// owns (Config.NATPorts), at random, never one a live mapping holds.
type natPorts struct {
	lo, hi uint16
	used   map[netip.AddrPort]int // public address:port -> live mappings on it
}

// pick returns a free port of the range on addr, or false when the range
// is full there. Random picks first, so that ports are not guessable in
// order; a sweep from a random point then finds the last free ones.
func (np *natPorts) pick(addr netip.Addr) (uint16, bool) {
	n := int(np.hi) - int(np.lo) + 1
	if n <= 0 {
		return 0, false
	}
	for range 32 {
		p := np.lo + uint16(rand.IntN(n))
		if np.used[netip.AddrPortFrom(addr, p)] == 0 {
			return p, true
		}
	}
	start := rand.IntN(n)
	for i := range n {
		p := np.lo + uint16((start+i)%n)
		if np.used[netip.AddrPortFrom(addr, p)] == 0 {
			return p, true
		}
	}
	return 0, false
}

func (np *natPorts) hold(ap netip.AddrPort) { np.used[ap]++ }

func (np *natPorts) release(ap netip.AddrPort) {
	if np.used[ap]--; np.used[ap] <= 0 {
		delete(np.used, ap)
	}
}

// natPlan is how one announcement on a proxied session is carried
// through the gateway.
type natPlan struct {
	pinhole rules.Pinhole // the data connection as the forward hook sees it
	maps    []rules.Mapping
	public  netip.AddrPort // the mapped public address:port (held in natPorts), if any
	send    netip.AddrPort // what the far side is told, if the line is rewritten
}

// planNAT works out the pinhole, the mappings and any rewrite for an
// announcement the policy accepted on a proxied session.
//
// The data connection must end at the announcer's own address (inside)
// whatever the far side is told. When the announcer's address differs on
// the far side (seen), the far side must connect to seen: a DNAT mapping
// from seen:port to inside:port, on a port ftpgate picks if the line has
// to be rewritten anyway (it carried the inside address), or the
// announced port if the announcer already wrote its seen address (a
// server's pasv_address) or wrote no address (229), unless a live
// mapping holds it. In active mode through destination NAT, an SNAT
// mapping makes the server's data connection come from the address the
// client connected to.
func (t *Tracker) planNAT(s *Session, ch Channel, code int) (natPlan, string) {
	tr := s.nat.tr
	peer, inside, seen := tr.Server.Addr(), tr.Client.Addr(), tr.ClientSeen.Addr()
	if ch.Passive {
		peer, inside, seen = tr.Client.Addr(), tr.Server.Addr(), tr.ServerSeen.Addr()
	}
	plan := natPlan{pinhole: rules.Pinhole{Peer: peer, Addr: inside, Port: ch.RespP}}
	if seen != inside {
		port := ch.RespP
		public := netip.AddrPortFrom(seen, port)
		rewrite := ch.RespH == inside && code != 229
		if rewrite || t.nat.used[public] > 0 {
			p, ok := t.nat.pick(seen)
			if !ok {
				return natPlan{}, fmt.Sprintf("no free NAT port on %s in %d-%d", seen, t.nat.lo, t.nat.hi)
			}
			port, public = p, netip.AddrPortFrom(seen, p)
			plan.send = public
		}
		plan.public = public
		plan.maps = append(plan.maps, rules.Mapping{Peer: peer, Addr: seen, Port: port, ToAddr: inside, ToPort: ch.RespP})
	}
	if !ch.Passive && tr.ServerSeen.Addr() != tr.Server.Addr() {
		plan.maps = append(plan.maps, rules.Mapping{SNAT: true, Peer: peer, Addr: inside, Port: ch.RespP, ToAddr: tr.ServerSeen.Addr()})
	}
	return plan, ""
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
	case verb == parser.VerbPORT:
		b, err = parser.AppendPORT(nil, to)
	case verb == parser.VerbEPRT:
		b, err = parser.AppendEPRT(nil, to)
	default:
		return nil, fmt.Errorf("%s cannot be rewritten", verb)
	}
	if err != nil {
		return nil, err
	}
	return append(b, '\r', '\n'), nil
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
		t.endSession(old, "handed to the control proxy")
	}
	s := &Session{ID: t.sessionID(tr.Client, tr.Server), Client: tr.Client, Server: tr.Server,
		Start: t.now, Last: t.now, host: t, env: &t.env, nat: &natSession{id: id, tr: tr}}
	s.pair.inStep, s.pair.greeting = true, true
	s.established = true
	t.proxied[id] = s
	t.stats.SessionsStarted++
	t.stats.SessionsProxied++
	t.log.Info("session start", "session", s.ID, "client", tr.Client.String(), "server", tr.Server.String(),
		"proxied", true, "client_seen_as", tr.ClientSeen.Addr().String(), "server_seen_as", tr.ServerSeen.String(),
		"translated", tr.Translated())
	if t.isImplicit(tr.Server.Port()) {
		// The proxy relays implicit FTPS unread from the first byte.
		s.implicit = true
		s.enc = encryption{on: true}
		t.openScoped(s, "implicit FTPS through the control proxy")
	}
}

// ProxiedLine takes one whole line the control proxy read on session id
// and returns what to send on in its place (possibly nothing yet: the
// lines of a multi-line reply go on with its last one), and whether the
// session has turned to TLS, after which the proxy relays bytes unread.
// What the line made ftpgate open must be committed before the returned
// bytes are sent (Commit): the far side may connect at once.
//
// forwarded says the proxy has sent the line on already (a line that
// cannot be rewritten): it is only recorded.
func (t *Tracker) ProxiedLine(id uint64, fromServer, forwarded bool, data []byte, now time.Time) (out []byte, raw bool) {
	s := t.proxied[id]
	if s == nil || s.ended {
		return data, false
	}
	if now.After(t.now) {
		t.now = now
	}
	t.env.now = t.now
	s.Last = t.now
	n := s.nat
	n.rewrite = nil
	text := data
	for len(text) > 0 && (text[len(text)-1] == '\n' || text[len(text)-1] == '\r') {
		text = text[:len(text)-1]
	}
	t.stats.Lines++
	if !fromServer {
		start := n.clientOff
		n.clientOff += uint32(len(data))
		s.clientLine(line{text: text, start: start, end: n.clientOff, ack: n.serverOff, framed: true})
		out = data
		if n.rewrite != nil {
			out = n.rewrite
		}
		return out, s.enc.on
	}
	start := n.serverOff
	n.serverOff += uint32(len(data))
	s.serverLine(line{text: text, start: start, end: n.serverOff, ack: n.clientOff, framed: true})
	switch {
	case forwarded:
		out = data
	case n.rewrite != nil:
		out, n.held = n.rewrite, nil
	case s.reply.inMulti:
		n.held = append(n.held, data...)
		if len(n.held) > 4*t.cfg.MaxLineLength {
			out, n.held = n.held, nil // a reply that long is not an announcement
		} else {
			out = []byte{}
		}
	case len(n.held) > 0:
		out, n.held = append(n.held, data...), nil
	default:
		out = data
	}
	return out, s.enc.on
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
	t.endProxied(s, reason)
}

func (t *Tracker) endProxied(s *Session, reason string) {
	if s.ended {
		return
	}
	s.end(reason)
	delete(t.proxied, s.nat.id)
	t.stats.SessionsEnded++
	attrs := []any{"session", s.ID, "reason", reason, "duration", s.Last.Sub(s.Start).Round(time.Millisecond).String(), "proxied", true}
	if s.limiter.suppressed > 0 {
		attrs = append(attrs, "log_lines_suppressed", s.limiter.suppressed)
		t.stats.LogSuppressed += uint64(s.limiter.suppressed)
	}
	t.log.Info("session end", attrs...)
}
