package conntrack

import (
	"bytes"
	"fmt"
	"strings"
	"time"

	"github.com/ftpgate/ftpgate/parser"
)

// bytes takes delivered bytes of direction d, in order.
func (s *Session) bytes(d int, seq uint32, data []byte, ack uint32, now time.Time) {
	for len(data) > 0 && !s.life.ended {
		if s.ftps.encrypted(d) {
			var ok bool
			if data, seq, ok = s.encryptedBytes(d, seq, data, ack); !ok {
				return
			}
		}
		data, seq = s.lines[d].feed(data, seq, ack, func(l line) bool {
			s.line(d, l)
			return !s.ftps.encrypted(d) // stop splitting where TLS begins
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
	if s.nat != nil {
		s.nat.lineAt = l.start
	}
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
		s.nat.lineDone(d, l, d == fromServer && s.reply.inMulti && parser.ReplyVerb(s.reply.code).IsPassive(), 4*s.env.cfg.MaxLineLength)
	}
}

// blankLines takes a run of empty lines. A client's are commands to a
// server (most answer each with 500), so they count for pairing, as one
// run; a server's are nothing.
func (s *Session) blankLines(d int, l line) {
	if d == fromServer {
		s.echo.serverLineEnded(l)
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
		s.echo.serverLineEnded(l)
		s.reply.inMulti = false
		s.pair.uncertain(s, "a reply line longer than --max-line")
		return
	}
	s.pair.uncertain(s, "a command longer than --max-line")
	// The server answers it (or its pieces): a placeholder keeps a PASV
	// that follows pairable.
	s.pair.push(s, pendingCommand{verb: parser.VerbOther, time: s.env.now, end: l.end})
}

// pickUp starts a direction whose beginning ftpgate did not see.
func (s *Session) pickUp(d int) {
	s.life.pickedUp = true
	if s.pair.inStep {
		s.pair.outOfStep(s, "the session was picked up mid-stream")
	}
	s.gap(d)
}

// gap resynchronises the line splitter of d after bytes it will never see.
func (s *Session) gap(d int) {
	if !s.ftps.encrypted(d) {
		s.lines[d].resync()
	}
	if d == fromServer {
		s.reply.inMulti = false
		s.echo.continues = false
	}
}

func (s *Session) clientLine(l line) {
	s.env.obs.Line(ControlLine{Time: s.env.now, Session: s.ID, Client: s.Client, Server: s.Server, Text: l.text})
	if s.echo.clientSent(l.text) {
		s.echoRisk()
	}
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
	if !s.pair.inStep && s.pair.quietPoint(s, l) {
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
			pc.plan = s.host.planActive(s, activeChannel(s, cmd, s.env.now))
		} else {
			s.host.refuse(s, activeChannel(s, cmd, s.env.now), refusedPairingUncertain, "pairing of replies with commands is uncertain: "+s.pair.why)
		}
	}
	s.pair.push(s, pc)
}

// echoRisk ends what the session may open when its server ends lines
// with a bare LF (or has not said yet) and its client has sent text that
// looks like a reply: the server may echo it, and an echo is then a line
// like any reply.
func (s *Session) echoRisk() {
	if !s.echo.atRisk() {
		return
	}
	why := "the client sent text that looks like a reply, and its server ends lines with a bare LF: an echo cannot be told from a reply"
	s.env.stats.NotReplyStart++
	s.pair.distrust(s, why)
}

func (s *Session) serverLine(l line) {
	cont := s.echo.continues
	s.env.obs.Line(ControlLine{Time: s.env.now, Session: s.ID, Client: s.Client, Server: s.Server, FromServer: true, Text: l.text})
	rl := parser.ParseReplyLine(l.text)
	r := &s.reply
	if !cont && rl.Code != 0 && !rl.More && (!r.inMulti || rl.Code == r.code) && s.echo.learn(l) {
		s.echoRisk() // this line ends a reply: the server's line ends are known
	}
	s.echo.serverLineEnded(l)
	if r.inMulti {
		if rl.Code == r.code && !rl.More {
			s.reply.scan(rl.Text)
			r.inMulti = false
			s.finalLine(rl.Code)
			return
		}
		s.reply.scan(l.text)
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
	s.reply.scan(rl.Text)
	if rl.More {
		r.inMulti = true
		return
	}
	s.finalLine(rl.Code)
}

// scan looks for the announcement of a 227, 228 or 229 reply in one of
// its lines; the first line that holds one wins.
func (r *reply) scan(text []byte) {
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
	want := parser.ReplyVerb(code)
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
		ch := activeChannel(s, cmd.cmd, cmd.time)
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
	if status == answered && cmd.count == 0 && cmd.verb == parser.VerbAUTH && !s.echo.echoed {
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
	case s.echo.echoed:
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
	if s.life.ended {
		return
	}
	s.life.ended = true
	for _, c := range s.pair.pending {
		s.pair.drop(s, c, refusedNoReply, "no reply from the server before the session ended")
	}
	s.pair.pending = nil
	s.lines = [2]lineSplitter{}
	s.tcp.forget()
	s.host.closeSessionPinholes(s, kind, reason)
	s.host.closeScoped(s, kind, reason)
	if e, ok := s.ftps.record(s, s.env.now); ok {
		s.env.obs.Encrypted(e)
	}
	if s.life.established {
		s.env.obs.SessionEnd(SessionEnd{Session: s.ID, Client: s.Client, Server: s.Server, Start: s.Start, End: s.env.now, Reason: reason})
	}
}
