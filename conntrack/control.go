package conntrack

import (
	"fmt"
	"strings"
	"time"

	"github.com/ftpgate/ftpgate/parser"
)

// encryption is where a session stands with TLS (RFC 4217).
type encryption struct {
	on    bool    // an AUTH was accepted: not parsed until it has properly ended
	clear [2]bool // per direction: back in clear text after a close_notify
}

// bytes takes delivered bytes of direction d, in order.
func (s *Session) bytes(d int, seq uint32, data []byte, ack uint32, now time.Time) {
	for len(data) > 0 && !s.ended {
		if s.enc.on && !s.enc.clear[d] {
			clear, ok := s.tls[d].walk(data)
			if s.implicit && d == fromServer && s.tls[d].appData {
				// The handshake is done: the server sends application data.
				s.host.openScoped(s, "implicit FTPS: the TLS handshake completed")
			}
			if !ok {
				return
			}
			seq += uint32(len(data) - len(clear))
			data = clear
			if !s.leaveTLS(d, data) {
				return
			}
		}
		var tooLong int
		data, seq, tooLong = s.lines[d].feed(data, seq, ack, func(l line) bool {
			s.env.stats.Lines++
			if d == fromClient {
				s.clientLine(l)
			} else {
				s.serverLine(l)
			}
			return !s.enc.on || s.enc.clear[d] // stop splitting where TLS begins
		})
		if tooLong > 0 {
			s.env.stats.LinesTooLong += uint64(tooLong)
			s.logf(logTooLong, levelWarn, "control line too long, dropped unparsed", "session", s.ID,
				"from", dirName(d), "limit", s.lines[d].max)
		}
	}
}

// leaveTLS decides whether the clear text that follows a direction's
// close_notify is to be parsed. The server's is, once it shows: the
// server ends TLS only after it has accepted CCC. The client's only once
// the server has ended TLS too; before, it is dropped unparsed.
func (s *Session) leaveTLS(d int, clear []byte) bool {
	if d == fromClient && !s.tls[fromServer].closed() && !s.enc.clear[fromServer] {
		s.lines[d].resync()
		return false
	}
	look := looksLikeCommand
	if d == fromServer {
		look = looksLikeReply
	}
	if !look(clear) {
		s.tls[d].opaque = true
		return false
	}
	first := !s.enc.clear[fromClient] && !s.enc.clear[fromServer]
	s.enc.clear[d] = true
	s.lines[d].buf = s.lines[d].buf[:0]
	if d == fromServer {
		s.reply.inMulti = false
	}
	if first {
		// What was said inside TLS is unknown.
		s.pair.outOfStep(s, "the session left TLS")
	}
	if s.enc.clear[fromClient] && s.enc.clear[fromServer] {
		s.enc = encryption{}
		s.cccAt = s.env.now
		s.host.closeScoped(s, "the session left TLS (CCC): exact pinholes again")
		s.env.log.Info("session back in clear text after TLS (CCC), parsing again", "session", s.ID)
	}
	return true
}

// enterTLS is called when the server accepts AUTH (234).
func (s *Session) enterTLS() {
	s.enc = encryption{on: true}
	s.tls = [2]tlsWalker{}
	for d := range s.lines {
		s.lines[d].buf = s.lines[d].buf[:0]
		s.lines[d].discarding, s.lines[d].unframed = false, false
	}
	s.reply.inMulti = false
	s.pair.dropPending(s, "sent after AUTH, when the session became encrypted")
	s.authAt = s.env.now
	s.host.openScoped(s, "AUTH accepted: the announcements are inside TLS")
	s.env.log.Info("session encrypted: AUTH accepted, no longer parsed until TLS ends after an accepted CCC",
		"session", s.ID)
}

// pickUp starts a direction whose beginning ftpgate did not see.
func (s *Session) pickUp(d int) {
	s.pickedUp = true
	if s.pair.inStep {
		s.pair.outOfStep(s, "the session was picked up mid-stream")
	}
	s.gap(d)
}

// gap resynchronises the line splitter of d after bytes it will never see.
func (s *Session) gap(d int) {
	if !s.enc.on || s.enc.clear[d] {
		s.lines[d].resync()
	}
	if d == fromServer {
		s.reply.inMulti = false
	}
}

func (s *Session) clientLine(l line) {
	s.observeLine(false, l.text)
	cmd, err := parser.ParseCommand(l.text)
	if cmd.Verb.IsData() {
		// A new data command supersedes every pinhole not yet used.
		s.host.closeSessionPinholes(s, "superseded by a new data command")
	}
	if err != nil {
		s.env.stats.Malformed++
		s.logf(logMalformed, levelInfo, "malformed command ignored", "session", s.ID, "verb", cmd.Verb, "error", err)
	}
	if !s.pair.inStep && s.quietPoint(l) {
		s.pair.backInStep(s)
	}
	pc := pendingCommand{verb: cmd.Verb, cmd: cmd, valid: err == nil, time: s.env.now, end: l.end}
	if s.nat != nil && pc.verb.IsActive() && pc.valid {
		// What the server will connect to must be mapped, and the command
		// perhaps rewritten, before it reaches the server.
		pc.decided = true
		s.host.decide(s, s.activeChannel(cmd, s.env.now), s.Client.Addr())
	}
	s.pair.push(s, pc)
}

func (s *Session) serverLine(l line) {
	s.observeLine(true, l.text)
	rl := parser.ParseReplyLine(l.text)
	r := &s.reply
	if r.inMulti {
		if rl.Code == r.code && !rl.More {
			s.scanReply(rl.Text)
			r.inMulti = false
			s.finalLine(rl.Code)
			return
		}
		s.scanReply(l.text)
		return
	}
	if rl.Code == 0 {
		return // not a reply line; nothing to pair it with
	}
	r.code, r.ack = rl.Code, l.ack
	r.found, r.err = false, nil
	r.atFinal = false
	s.scanReply(rl.Text)
	if rl.More {
		r.inMulti = true
		return
	}
	s.finalLine(rl.Code)
}

// scanReply looks for the announcement of a 227, 228 or 229 reply in one
// of its lines; the first line that holds one wins.
func (s *Session) scanReply(text []byte) {
	r := &s.reply
	if r.found {
		return
	}
	var err error
	switch r.code {
	case 227:
		r.addr, err = parser.ParsePASVReply(text)
	case 228:
		r.addr, err = parser.ParseLPSVReply(text)
	case 229:
		r.port, err = parser.ParseEPSVReply(text)
	default:
		return
	}
	if err == nil {
		r.found, r.err = true, nil
	} else if r.err == nil {
		r.err = err
	}
}

// passiveVerbs are the commands whose reply announces an address.
var passiveVerbs = map[int]parser.Verb{227: parser.VerbPASV, 228: parser.VerbLPSV, 229: parser.VerbEPSV}

// commandWords names a command in a reason, for people: no internal
// names.
func commandWords(c pendingCommand) string {
	switch {
	case c.verb == parser.VerbOther:
		return "a command that asks for no data connection"
	case c.verb == parser.VerbEPSV && c.cmd.All:
		return "EPSV ALL"
	}
	return verbWords(c.verb)
}

// verbWords is a verb with its article: "a PASV", "an EPSV".
func verbWords(v parser.Verb) string {
	if n := v.String(); strings.IndexByte("AEIOLFHMNRSX", n[0]) >= 0 {
		return "an " + n
	}
	return "a " + v.String()
}

// finalLine handles the last line of a reply.
func (s *Session) finalLine(code int) {
	if code < 200 {
		return // preliminary: the command still waits for its final reply
	}
	s.reply.atFinal = true
	// These reply codes mean one thing whatever they pair with: the
	// session is now encrypted, or over.
	switch code {
	case 234:
		defer s.enterTLS()
	case 221:
		defer s.host.closeSessionPinholes(s, "session quit")
	}
	if s.pair.greeting {
		s.pair.greeting = false // RFC 959: a connection opens with a reply to no command
		return
	}
	passive := passiveVerbs[code]
	cmd, status := s.pair.answer(s, s.reply.ack, passive)
	if passive != parser.VerbOther {
		s.passiveReply(code, passive, cmd, status)
		return
	}
	if status != answered {
		return
	}
	switch {
	case cmd.count > 0:
		// A command past maxPending; its announcement was refused.
	case cmd.decided:
		if code >= 300 {
			s.host.closeSessionPinholes(s, fmt.Sprintf("server refused %s with %d", cmd.verb, code))
		}
	case cmd.verb.IsActive() && cmd.valid:
		ch := s.activeChannel(cmd.cmd, cmd.time)
		switch {
		case code >= 300:
			reason := fmt.Sprintf("server refused %s with %d", cmd.verb, code)
			if c := s.Client.Addr(); ch.RespH != c && natSuspected(ch.RespH, c) {
				// Servers refuse a PORT to an address other than the one
				// they see the client at: behind NAT, its own.
				reason = fmt.Sprintf("NAT suspected: announced address %s is not the client's control address %s, and the %s", ch.RespH, c, reason)
			}
			s.host.refuse(s, ch, reason)
		case s.pair.distrusted != "":
			s.host.refuse(s, ch, "active mode refused on this session: "+s.pair.distrusted)
		default:
			s.host.decide(s, ch, s.Client.Addr())
		}
	case cmd.verb == parser.VerbEPSV && cmd.cmd.All:
		s.epsvAll = true
	}
}

// activeChannel builds the record of an active-mode announcement: the
// server will connect to the address the client wrote.
func (s *Session) activeChannel(cmd parser.Command, ts time.Time) Channel {
	return Channel{
		Time: ts, Session: s.ID, Command: cmd.Verb, Passive: false,
		OrigH: s.Server.Addr(), RespH: cmd.Endpoint.Addr(), RespP: cmd.Endpoint.Port(),
		Client: s.Client, Server: s.Server,
	}
}

func (s *Session) passiveReply(code int, verb parser.Verb, cmd pendingCommand, status answerStatus) {
	r := &s.reply
	if !r.found {
		if r.err != nil {
			s.env.stats.Malformed++
			s.logf(logMalformed, levelInfo, "malformed reply ignored", "session", s.ID, "code", code, "error", r.err)
		}
		return
	}
	ch := Channel{
		Time: s.env.now, Session: s.ID, Command: verb, Passive: true,
		OrigH: s.Client.Addr(), RespH: r.addr.Addr(), RespP: r.addr.Port(),
		Client: s.Client, Server: s.Server,
	}
	if code == 229 {
		ch.RespH, ch.RespP = s.Server.Addr(), r.port
	}
	switch {
	case status == unsolicited:
		s.host.refuse(s, ch, fmt.Sprintf("%d reply without a %s from the client", code, verb))
	case status == uncertain:
		s.host.refuse(s, ch, "pairing of replies with commands is uncertain: "+s.pair.why)
	case cmd.count > 0:
		s.host.refuse(s, ch, fmt.Sprintf("%d reply answers a command past the %d that ftpgate keeps", code, maxPending))
	case cmd.verb != verb || (verb == parser.VerbEPSV && cmd.cmd.All):
		// Only a PASV asks for a 227. The server sent one nobody asked
		// for, or ftpgate has miscounted; either way the next replies
		// cannot be trusted to answer the next commands.
		s.host.refuse(s, ch, fmt.Sprintf("%d reply answers %s, not %s", code, commandWords(cmd), verbWords(verb)))
		s.pair.outOfStep(s, fmt.Sprintf("a %d reply answered %s", code, commandWords(cmd)))
	default:
		s.host.decide(s, ch, s.Server.Addr())
	}
}

// end is called once when the control connection is gone.
func (s *Session) end(reason string) {
	if s.ended {
		return
	}
	s.ended = true
	for _, c := range s.pair.pending {
		if c.undecided() {
			s.host.refuse(s, s.activeChannel(c.cmd, c.time), "no reply from the server before the session ended")
		}
	}
	s.pair.pending = nil
	s.lines = [2]lineSplitter{}
	s.h = [2]half{}
	s.host.closeSessionPinholes(s, reason)
	s.host.closeScoped(s, reason)
	s.host.encryptedRecord(s)
	s.observeEnd(reason)
}
