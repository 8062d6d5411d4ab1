package conntrack

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/ftpgate/ftpgate/parser"
)

// maxPending bounds the commands a session may have in flight with all
// they announce. FTP clients pipeline a handful at most; commands beyond
// are kept only as a count (see pendingCommand.count), so that pairing
// stays exact, and an announcement among them is refused at once.
const maxPending = 64

// pendingCommand is a client command waiting for its final reply.
type pendingCommand struct {
	verb  parser.Verb
	cmd   parser.Command
	valid bool // the command parsed without error
	time  time.Time
	end   uint32 // client sequence number after its LF
	// count > 0 makes this a run of commands of which only the number,
	// the end of the first (while firstKnown) and the end of the last
	// are kept: commands past maxPending, or (blank) empty lines.
	count      int
	firstEnd   uint32
	firstKnown bool
	blank      bool
	// plan: an active-mode command of a proxied session, rewritten for
	// the server with a public port that is mapped to the client only
	// once the server accepts it (see Session.nat).
	plan *natPlan
	// decided: an active-mode command of a proxied session, planned or
	// refused when the client sent it.
	decided bool
}

// undecided reports whether c is an active-mode announcement still
// waiting for the server's reply to be decided.
func (c pendingCommand) undecided() bool {
	return c.count == 0 && c.verb.IsActive() && c.valid && !c.decided
}

// pairing matches each final reply with the command it answers.
//
// FTP answers commands in order, one final reply each, so counting pairs
// them, as long as ftpgate has seen every byte both ways. What makes it
// exact is the acknowledgement number: the segment that carries a reply
// acknowledges every client byte the server had received when it wrote
// it, so a reply can only answer a command that ends at or before that
// number. A greeting, a reply to a command ftpgate has not seen, or one
// written before the command arrived, then pairs with nothing, instead of
// shifting every later pair by one.
//
// When ftpgate cannot be sure it has counted right (bytes were lost, two
// copies of the same bytes differed, the session was picked up
// mid-stream or left TLS), pairing is out of step: a 227/228/229, which
// only a PASV/LPSV/EPSV can have asked for, still pairs with such a
// command the server had received; nothing else opens. Pairing is back in
// step at the next command sent at a quiet point, when both sides'
// acknowledgements show that each had everything the other had sent and
// the server had finished its last reply (see pairing.quietPoint), which
// for a client that waits for each reply is the very next command.
//
// A quiet point proves nothing about commands ftpgate never saw: a client
// that pipelines them can keep one unanswered across it. So after bytes
// were lost or two copies differed, pairing comes back in step for what
// the logs and analyze report, but active mode stays refused for the rest
// of the session (distrusted). Passive replies need no count: they say
// what they answer.
type pairing struct {
	pending []pendingCommand
	inStep  bool
	why     string // why pairing is out of step
	// distrusted is set, with why, when bytes were lost or differed:
	// active mode is refused for the rest of the session (see
	// Session.lost).
	distrusted string
	greeting   bool // the server's greeting is still to come
}

// outOfStep says pairing can no longer be trusted to count right: the
// commands waiting are dropped (their announcements refused).
func (p *pairing) outOfStep(s *Session, why string) {
	if p.inStep || p.why == "" {
		if p.inStep {
			s.logf(logOutOfStep, levelInfo, "pairing of replies with commands out of step; active mode refused until it is back in step",
				"session", s.ID, "because", why)
		}
		p.why = why
	}
	p.inStep = false
	p.greeting = false
	p.dropPending(s, refusedPairingUncertain, "pairing of replies with commands is uncertain: "+why)
}

// uncertain says the count of one command is in doubt (how its receiver
// framed it is unknown): pairing is out of step, but the commands
// waiting stay, so that a PASV among them still pairs with its 227, while
// an active-mode command pairs with nothing.
func (p *pairing) uncertain(s *Session, why string) {
	if p.inStep {
		s.logf(logOutOfStep, levelInfo, "pairing of replies with commands out of step; active mode refused until it is back in step",
			"session", s.ID, "because", why)
		p.why = why
	} else if p.why == "" {
		p.why = why
	}
	p.inStep = false
}

// distrust ends active mode for the rest of the session.
func (p *pairing) distrust(s *Session, why string) {
	if p.distrusted == "" {
		p.distrusted = why
		s.logf(logOutOfStep, levelWarn, "active mode refused for the rest of this session", "session", s.ID, "because", why)
	}
	p.outOfStep(s, why)
}

// backInStep is called at a quiet point.
func (p *pairing) backInStep(s *Session) {
	p.dropPending(s, refusedPairingUncertain, "pairing of replies with commands is uncertain: "+p.why)
	p.inStep, p.why = true, ""
	s.logf(logOutOfStep, levelInfo, "pairing of replies with commands back in step", "session", s.ID)
}

// dropPending forgets every waiting command, refusing the announcements.
func (p *pairing) dropPending(s *Session, kind RefusalKind, reason string) {
	for _, c := range p.pending {
		p.drop(s, c, kind, reason)
	}
	p.pending = p.pending[:0]
}

// drop forgets one waiting command: an announcement among them is
// refused, and a public port planned for it is given back.
func (p *pairing) drop(s *Session, c pendingCommand, kind RefusalKind, reason string) {
	if c.plan != nil {
		s.host.dropPlanned(s, c, kind, reason)
		return
	}
	if c.undecided() {
		s.host.refuse(s, activeChannel(s, c.cmd, c.time), kind, reason)
	}
}

// supersedePlanned gives up the plans of active-mode commands still
// waiting for their reply: a new data command supersedes them, as it
// supersedes open pinholes.
func (p *pairing) supersedePlanned(s *Session) {
	for i := range p.pending {
		if c := &p.pending[i]; c.plan != nil {
			s.host.dropPlanned(s, *c, refusedSuperseded, "superseded by a new data command before the server answered")
			c.plan, c.valid = nil, false
		}
	}
}

// push queues a command the server has yet to answer.
func (p *pairing) push(s *Session, c pendingCommand) {
	n := len(p.pending)
	if n > 0 && p.pending[n-1].count > 0 && !p.pending[n-1].blank {
		run := &p.pending[n-1]
		run.count++
		run.end = c.end
		p.refuseUnkept(s, c)
		return
	}
	if n < maxPending {
		p.pending = append(p.pending, c)
		return
	}
	p.overflow(s, c.end, c.end, c.time)
	p.refuseUnkept(s, c)
}

// keeps reports whether the next command pushed will be kept as itself,
// not only counted.
func (p *pairing) keeps() bool {
	n := len(p.pending)
	return n < maxPending && (n == 0 || p.pending[n-1].count == 0 || p.pending[n-1].blank)
}

// pushBlanks queues a run of n empty lines, the first ending at first
// and the last at end: servers answer them like commands.
func (p *pairing) pushBlanks(s *Session, n int, first, end uint32, now time.Time) {
	k := len(p.pending)
	if k > 0 && p.pending[k-1].count > 0 {
		run := &p.pending[k-1]
		run.count += n
		run.end = end
		return
	}
	if k < maxPending {
		p.pending = append(p.pending, pendingCommand{verb: parser.VerbOther, count: n, blank: true,
			firstEnd: first, firstKnown: true, end: end, time: now})
		return
	}
	p.overflow(s, first, end, now)
	p.pending[len(p.pending)-1].count = n
}

// overflow starts the run of commands past maxPending.
func (p *pairing) overflow(s *Session, first, end uint32, now time.Time) {
	s.env.stats.PendingOverflow++
	s.logf(logPending, levelWarn, "too many commands without a reply; further ones are counted, not kept",
		"session", s.ID, "limit", maxPending)
	p.pending = append(p.pending, pendingCommand{verb: parser.VerbOther, count: 1, end: end, firstEnd: first, firstKnown: true, time: now})
}

func (p *pairing) refuseUnkept(s *Session, c pendingCommand) {
	if c.plan != nil {
		s.host.dropPlanned(s, c, refusedTooManyCommands, fmt.Sprintf("more than %d commands were waiting for a reply; this one was not kept", maxPending))
		return
	}
	if c.undecided() {
		s.host.refuse(s, activeChannel(s, c.cmd, c.time), refusedTooManyCommands,
			fmt.Sprintf("more than %d commands were waiting for a reply; this one was not kept", maxPending))
	}
}

// answerStatus says what a final reply answers.
type answerStatus uint8

const (
	answered    answerStatus = iota // cmd is the command it answers
	unsolicited                     // no command: the server wrote it before receiving any waiting one
	uncertain                       // pairing is out of step
)

// answer pops the command a final reply answers. ack is the
// acknowledgement number of the segment the reply began in, want the
// command a reply of this code needs (VerbOther: any).
func (p *pairing) answer(s *Session, ack uint32, want parser.Verb) (pendingCommand, answerStatus) {
	if !p.inStep {
		if want != parser.VerbOther {
			for i, c := range p.pending {
				if c.count == 0 && c.verb == want && !c.cmd.All && seqAtLeast(ack, c.end) {
					// The commands before it were answered before it.
					for _, b := range p.pending[:i] {
						p.drop(s, b, refusedPairingUncertain, "pairing of replies with commands is uncertain: "+p.why)
					}
					p.pending = p.pending[:copy(p.pending, p.pending[i+1:])]
					return c, answered
				}
			}
		}
		if len(p.pending) > 0 && p.fits(ack) {
			p.drop(s, p.pop(), refusedPairingUncertain, "pairing of replies with commands is uncertain: "+p.why)
		}
		return pendingCommand{}, uncertain
	}
	if len(p.pending) == 0 {
		return pendingCommand{}, unsolicited
	}
	front := &p.pending[0]
	if front.count > 0 && !front.firstKnown && !seqAtLeast(ack, front.end) {
		// Somewhere inside a run of commands whose ends are not kept.
		why := "too many commands were waiting for a reply"
		if front.blank {
			why = "replies to a run of empty lines cannot be told apart"
		}
		p.outOfStep(s, why)
		return pendingCommand{}, uncertain
	}
	if !p.fits(ack) {
		return pendingCommand{}, unsolicited
	}
	return p.pop(), answered
}

// fits reports whether the front command ends at or before ack.
func (p *pairing) fits(ack uint32) bool {
	f := &p.pending[0]
	if f.count > 0 {
		if f.firstKnown {
			return seqAtLeast(ack, f.firstEnd)
		}
		return seqAtLeast(ack, f.end)
	}
	return seqAtLeast(ack, f.end)
}

// pop removes the front command. It shifts the rest down rather than
// reslicing, so the queue keeps its array and the next command costs no
// allocation.
func (p *pairing) pop() pendingCommand {
	f := &p.pending[0]
	if f.count > 1 {
		f.count--
		f.firstKnown = false // the next one ends somewhere up to f.end
		return pendingCommand{verb: parser.VerbOther, count: 1, blank: f.blank}
	}
	c := *f
	n := copy(p.pending, p.pending[1:])
	p.pending[n] = pendingCommand{}
	p.pending = p.pending[:n]
	return c
}

// quietPoint reports whether command line l was sent at a moment when,
// by both sides' acknowledgements, the client had received every byte
// ftpgate has seen from the server, the server had received every client
// byte before l when it last sent data, and that data ended a final
// reply: nothing was in flight either way, so the next final reply the
// server writes after receiving l answers l. That holds for what
// ftpgate saw; see pairing for what it cannot rule out.
func (p *pairing) quietPoint(s *Session, l line) bool {
	if n := s.nat; n != nil && n.packet {
		// The packet path's session has no TCP tracking of its own: the
		// same test on what its segments said.
		switch {
		case !l.framed, !n.started[fromServer]:
			return false
		case !s.lines[fromServer].empty(), s.reply.inMulti, !s.reply.atFinal:
			return false
		}
		return !seqAfter(n.delivered[fromServer], l.ack) && !seqAfter(l.start, n.lastAck[fromServer])
	}
	srv := &s.tcp.h[fromServer]
	switch {
	case !l.framed, !srv.started, !srv.lastAckOK:
		return false
	case !s.lines[fromServer].empty(), s.reply.inMulti, !s.reply.atFinal:
		return false
	}
	return !seqAfter(srv.delivered, l.ack) && !seqAfter(l.start, srv.lastAck)
}

// reply is the server reply being read.
type reply struct {
	code    int
	inMulti bool
	ack     uint32 // acknowledgement number of the segment its first line came in
	addr    netip.AddrPort
	port    uint16
	found   bool
	err     error
	atFinal bool // the latest complete server line ended a final reply
}
