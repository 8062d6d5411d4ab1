package conntrack

import (
	"bytes"
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

// eolMode is how a server ends its lines, learnt from the last line of
// its first reply (its greeting): inner lines of a multi-line banner may
// come from a file written with bare LFs even where the server ends its
// own lines with CR LF.
type eolMode uint8

const (
	eolUnknown eolMode = iota
	// eolCRLF: CR LF, as RFC 959 asks. A bare LF in a reply is then
	// text inside the line (a server echoing a client's argument), and
	// what follows it cannot start a reply.
	eolCRLF
	// eolLF: a server that ends lines with a bare LF. Every LF ends a
	// line, so an echo of a client's argument cannot be told from a
	// reply: once the client has sent something that looks like a reply,
	// nothing of the session opens (see noteReplyLike).
	eolLF
)

// bytes takes delivered bytes of direction d, in order.
func (s *Session) bytes(d int, seq uint32, data []byte, ack uint32, now time.Time) {
	for len(data) > 0 && !s.ended {
		if s.enc.on && !s.enc.clear[d] {
			clear, ok := s.tls[d].walk(data, seq, ack)
			s.tlsRounds(d)
			s.tlsProgress()
			n := len(data)
			if ok {
				n -= len(clear)
			}
			s.passOn(d, data[:n])
			if !ok || s.ended {
				return
			}
			seq += uint32(n)
			data = clear
			if !s.leaveTLS(d, data) {
				s.passOn(d, data)
				return
			}
		}
		data, seq = s.lines[d].feed(data, seq, ack, func(l line) bool {
			s.line(d, l)
			return !s.enc.on || s.enc.clear[d] // stop splitting where TLS begins
		})
	}
}

// passOn hands bytes that are not lines (TLS records) to the control
// proxy's output, for a session of the proxy.
func (s *Session) passOn(d int, b []byte) {
	if s.nat != nil {
		s.nat.send(d, b)
	}
}

// line takes one framed line of direction d.
func (s *Session) line(d int, l line) {
	switch {
	case l.blanks > 0:
		s.env.stats.Lines += uint64(l.blanks)
		s.blankLines(d, l)
	case l.tooLong:
		s.env.stats.LinesTooLong++
		s.logf(logTooLong, levelWarn, "control line too long, dropped unparsed", "session", s.ID,
			"from", dirName(d), "limit", s.lines[d].max)
		s.lineTooLong(d, l)
	case d == fromClient:
		s.env.stats.Lines++
		s.clientLine(l)
	default:
		s.env.stats.Lines++
		s.serverLine(l)
	}
	if s.nat != nil {
		s.nat.lineDone(d, l, d == fromServer && s.reply.inMulti && verbForCode[s.reply.code].IsPassive(), 4*s.env.cfg.MaxLineLength)
	}
}

// blankLines takes a run of empty lines. A client's are commands to a
// server (most answer each with 500), so they count for pairing, as one
// run; a server's are nothing.
func (s *Session) blankLines(d int, l line) {
	if d == fromServer {
		s.noteServerEOL(l)
		return
	}
	first := uint32(1)
	if l.text[0] == '\r' {
		first = 2
	}
	if !l.crlf || bytes.Count(l.text, []byte{'\n'}) != bytes.Count(l.text, []byte("\r\n")) {
		s.pair.uncertain(s, "commands ended by a bare LF: servers differ on whether that ends a command")
	}
	s.pair.pushBlanks(s, l.blanks, l.start+first, l.end, s.env.now)
}

// lineTooLong takes a line longer than --max-line. It was dropped
// unparsed, and how its receiver framed it is unknown (as one line, cut
// in pieces, or refused), so the count of commands and replies is too.
func (s *Session) lineTooLong(d int, l line) {
	if d == fromServer {
		s.noteServerEOL(l)
		s.reply.inMulti = false
		s.pair.uncertain(s, "a reply line longer than --max-line")
		return
	}
	s.pair.uncertain(s, "a command longer than --max-line")
	// The server answers it (or its pieces): a placeholder keeps a PASV
	// that follows pairable.
	s.pair.push(s, pendingCommand{verb: parser.VerbOther, time: s.env.now, end: l.end})
}

// noteServerEOL notes whether the next server line can start a reply:
// not after a bare LF from a server that ends its lines with CR LF.
func (s *Session) noteServerEOL(l line) {
	s.srvContinues = s.srvEOL == eolCRLF && !l.crlf
}

// learnServerEOL learns how the server ends its lines from the line that
// ends its first reply.
func (s *Session) learnServerEOL(l line) {
	if s.srvEOL != eolUnknown || !l.framed {
		return
	}
	s.srvEOL = eolLF
	if l.crlf {
		s.srvEOL = eolCRLF
	}
	s.echoRisk()
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
		s.tlsProgress()
		return false
	}
	first := !s.enc.clear[fromClient] && !s.enc.clear[fromServer]
	s.enc.clear[d] = true
	s.lines[d].reset()
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
		s.host.closeScoped(s, closedCCC, "the session left TLS (CCC): exact pinholes again")
		s.env.log.Info("session back in clear text after TLS (CCC), parsing again", "session", s.ID)
	}
	return true
}

// enterTLS is called when the server accepts AUTH (234).
func (s *Session) enterTLS() {
	s.startTLS()
	s.scopeTried, s.tlsDone = false, false
	for d := range s.lines {
		s.lines[d].reset()
	}
	s.reply.inMulti = false
	s.pair.dropPending(s, refusedEncrypted, "sent after AUTH, when the session became encrypted")
	s.authAt = s.env.now
	s.host.openScoped(s, "AUTH accepted: the announcements are inside TLS", false)
	s.env.log.Info("session encrypted: AUTH accepted, no longer parsed until TLS ends after an accepted CCC",
		"session", s.ID)
}

// startTLS makes the session encrypted from the next byte on.
func (s *Session) startTLS() {
	s.enc = encryption{on: true}
	s.tls = [2]tlsWalker{{hello: tlsClientHello}, {hello: tlsServerHello}}
	s.tlsRound = tlsRoundState{}
}

// tlsProgress follows an encrypted session's TLS: its scoped range opens
// once the handshake has completed in both directions (implicit FTPS),
// and closes as soon as either side is found not to speak TLS.
func (s *Session) tlsProgress() {
	switch {
	case !s.enc.on:
	case s.tls[fromClient].opaque || s.tls[fromServer].opaque:
		s.host.closeScoped(s, closedNotTLS, "the session does not speak TLS")
	case !s.tlsDone && s.tls[fromClient].helloOK && s.tls[fromServer].helloOK && s.tlsRound.rounds >= tlsRoundsNeeded:
		s.tlsDone = true
		why := "the TLS handshake completed"
		if s.implicit {
			why = "implicit FTPS: the TLS handshake completed"
		}
		s.host.openScoped(s, why, true)
	}
}

// tlsRoundsNeeded is how many exchanges of application data a session
// must make before its TLS handshake counts as completed.
const tlsRoundsNeeded = 3

// tlsRounds counts the exchanges of application data that follow the
// hellos: the client sends a data record, and the server answers with
// one in a segment that acknowledges it. Nothing is decrypted, so this
// is how a completed handshake shows: an honest server sends data only
// once the client's Finished checked out (a wrong one draws an alert,
// whose size is not counted, and a close), and then answers each of the
// client's commands. A client that throttles the server's first flight
// with a small window can make that flight look like answers, one per
// record it holds; three rounds need three records and come, for a real
// FTPS client, with its login (USER, PASS, PBSZ), before any data
// connection. See the README for what this proves and what it cannot.
func (s *Session) tlsRounds(d int) {
	r := &s.tlsRound
	for _, rec := range s.tls[d].data {
		switch {
		case d == fromClient:
			r.clientEnd, r.clientSent = rec.end, true
		case r.clientSent && seqAtLeast(rec.ack, r.clientEnd):
			r.rounds++
			r.clientSent = false
		}
	}
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
		s.srvContinues = false
	}
}

func (s *Session) clientLine(l line) {
	s.observeLine(false, l.text)
	s.noteReplyLike(l.text)
	cmd, err := parser.ParseCommand(l.text)
	if cmd.Verb.IsData() {
		// A new data command supersedes every pinhole not yet used.
		s.host.closeSessionPinholes(s, closedSuperseded, "superseded by a new data command")
		s.pair.supersedePlanned(s)
	}
	if err != nil {
		s.env.stats.Malformed++
		s.logf(logMalformed, levelInfo, "malformed command ignored", "session", s.ID, "verb", cmd.Verb, "error", err)
	}
	if !s.pair.inStep && s.quietPoint(l) {
		s.pair.backInStep(s)
	}
	if !l.crlf {
		// Before the command is queued: a PASV ended so still pairs with
		// its 227, and an active-mode command never opens.
		s.pair.uncertain(s, "a command ended by a bare LF: servers differ on whether that ends a command")
	}
	pc := pendingCommand{verb: cmd.Verb, cmd: cmd, valid: err == nil, time: s.env.now, end: l.end}
	if s.nat != nil && pc.undecided() && s.pair.keeps() {
		// What the server will connect to must be rewritten before it
		// reaches the server; it is mapped once the server accepts it.
		pc.decided = true
		if s.pair.inStep {
			pc.plan = s.host.planActive(s, s.activeChannel(cmd, s.env.now))
		} else {
			s.host.refuse(s, s.activeChannel(cmd, s.env.now), refusedPairingUncertain, "pairing of replies with commands is uncertain: "+s.pair.why)
		}
	}
	s.pair.push(s, pc)
}

// noteReplyLike notes a client line that holds what looks like a reply
// line: at its start, or after a CR or a NUL, which some servers turn
// into line ends when they echo an argument. No real client sends one.
func (s *Session) noteReplyLike(text []byte) {
	for !s.replyLike && len(text) > 0 {
		if looksLikeReply(text) {
			s.replyLike = true
			s.echoRisk()
			return
		}
		i := bytes.IndexAny(text, "\r\x00")
		if i < 0 {
			return
		}
		text = text[i+1:]
	}
}

// echoRisk ends what the session may open when its server ends lines
// with a bare LF (or has not said yet) and its client has sent text that
// looks like a reply: the server may echo it, and an echo is then a line
// like any reply.
func (s *Session) echoRisk() {
	if !s.replyLike || s.srvEOL == eolCRLF || s.echoed {
		return
	}
	s.echoed = true
	why := "the client sent text that looks like a reply, and its server ends lines with a bare LF: an echo cannot be told from a reply"
	s.env.stats.NotReplyStart++
	s.pair.distrust(s, why)
}

func (s *Session) serverLine(l line) {
	cont := s.srvContinues
	s.observeLine(true, l.text)
	rl := parser.ParseReplyLine(l.text)
	r := &s.reply
	if !cont && rl.Code != 0 && !rl.More && (!r.inMulti || rl.Code == r.code) {
		s.learnServerEOL(l) // this line ends a reply
	}
	s.noteServerEOL(l)
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
	switch {
	case rl.Code == 0:
		return // not a reply line; nothing to pair it with
	case cont:
		// After a bare LF from a server that ends its lines with CR LF:
		// the rest of a line whose reply has ended, not a reply of its
		// own (an echo of the client's argument, say).
		s.env.stats.NotReplyStart++
		s.logf(logMalformed, levelInfo, "line after a bare LF inside a reply ignored: the server ends its lines with CR LF, so it starts no reply",
			"session", s.ID, "code", rl.Code)
		return
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

// verbForCode names, for the reply codes only one command asks for, that
// command: a 227 answers a PASV or nothing, a 234 an AUTH or nothing.
var verbForCode = map[int]parser.Verb{227: parser.VerbPASV, 228: parser.VerbLPSV, 229: parser.VerbEPSV, 234: parser.VerbAUTH}

// commandWords names a command in a reason, for people: no internal
// names.
func commandWords(c pendingCommand) string {
	switch {
	case c.blank:
		return "an empty line"
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
	if code == 221 {
		// The session is over, whatever the 221 pairs with.
		defer s.host.closeSessionPinholes(s, closedQuit, "session quit")
	}
	if s.pair.greeting {
		s.pair.greeting = false // RFC 959: a connection opens with a reply to no command
		return
	}
	want := verbForCode[code]
	cmd, status := s.pair.answer(s, s.reply.ack, want)
	if cmd.plan != nil && want != parser.VerbOther {
		// A planned PORT answered by a reply no PORT gets: given up.
		s.host.dropPlanned(s, cmd, refusedUnsolicited, fmt.Sprintf("%s answered with %d", cmd.verb, code))
		cmd.plan = nil
	}
	switch {
	case code == 234:
		s.authReply(cmd, status)
		return
	case want != parser.VerbOther:
		s.passiveReply(code, want, cmd, status)
		return
	case status != answered:
		return
	}
	switch {
	case cmd.count > 0:
		// A command past maxPending, or an empty line.
	case cmd.plan != nil:
		s.host.plannedReply(s, cmd, code)
	case cmd.decided:
		// Refused when it was sent (a proxied session).
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
			s.host.refuse(s, ch, refusedByServer, reason)
		case s.pair.distrusted != "":
			s.host.refuse(s, ch, refusedActiveDistrusted, "active mode refused on this session: "+s.pair.distrusted)
		default:
			s.host.decide(s, ch, s.Client.Addr())
		}
	case cmd.verb == parser.VerbEPSV && cmd.cmd.All:
		s.epsvAll = true
	}
}

// authReply takes a 234: the session is encrypted from here on only if
// the 234 answers an AUTH the server received.
func (s *Session) authReply(cmd pendingCommand, status answerStatus) {
	if status == answered && cmd.count == 0 && cmd.verb == parser.VerbAUTH && !s.echoed {
		s.enterTLS()
		return
	}
	what := "no command"
	switch status {
	case uncertain:
		what = "no AUTH ftpgate can pair it with (" + s.pair.why + ")"
	case answered:
		what = commandWords(cmd)
		s.pair.outOfStep(s, "a 234 reply answered "+what)
	}
	s.env.stats.UnsolicitedAuth++
	s.logf(logMalformed, levelWarn, "234 reply that answers no AUTH: the session is not taken as encrypted",
		"session", s.ID, "answers", what)
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
	case s.echoed:
		s.host.refuse(s, ch, refusedPairingUncertain, "active and passive mode refused on this session: "+s.pair.distrusted)
	case status == unsolicited:
		s.host.refuse(s, ch, refusedUnsolicited, fmt.Sprintf("%d reply without a %s from the client", code, verb))
	case status == uncertain:
		s.host.refuse(s, ch, refusedPairingUncertain, "pairing of replies with commands is uncertain: "+s.pair.why)
	case cmd.count > 0 && !cmd.blank:
		s.host.refuse(s, ch, refusedTooManyCommands, fmt.Sprintf("%d reply answers a command past the %d that ftpgate keeps", code, maxPending))
	case cmd.verb != verb || (verb == parser.VerbEPSV && cmd.cmd.All) || cmd.blank:
		// Only a PASV asks for a 227. The server sent one nobody asked
		// for, or ftpgate has miscounted; either way the next replies
		// cannot be trusted to answer the next commands.
		s.host.refuse(s, ch, refusedUnsolicited, fmt.Sprintf("%d reply answers %s, not %s", code, commandWords(cmd), verbWords(verb)))
		s.pair.outOfStep(s, fmt.Sprintf("a %d reply answered %s", code, commandWords(cmd)))
	default:
		s.host.decide(s, ch, s.Server.Addr())
	}
}

// end is called once when the control connection is gone.
func (s *Session) end(kind CloseKind, reason string) {
	if s.ended {
		return
	}
	s.ended = true
	for _, c := range s.pair.pending {
		s.pair.drop(s, c, refusedNoReply, "no reply from the server before the session ended")
	}
	s.pair.pending = nil
	s.lines = [2]lineSplitter{}
	s.h = [2]half{}
	s.host.closeSessionPinholes(s, kind, reason)
	s.host.closeScoped(s, kind, reason)
	s.host.encryptedRecord(s)
	s.observeEnd(reason)
}
