package conntrack

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/ftpgate/ftpgate/parser"
)

// maxPending bounds the commands a session may have in flight without a
// final reply. FTP clients pipeline a handful at most.
const maxPending = 64

// Directions of a control connection.
const (
	fromClient = 0
	fromServer = 1
)

// pendingCommand is a client command waiting for its final reply.
type pendingCommand struct {
	verb     parser.Verb
	cmd      parser.Command
	valid    bool // the command parsed without error
	time     time.Time
	all      bool
	epsvOnly bool
}

// Session is one FTP control connection and what it negotiated.
type Session struct {
	ID     string
	Client netip.AddrPort
	Server netip.AddrPort
	Start  time.Time
	Last   time.Time

	tracker  *Tracker
	lines    [2]lineSplitter
	tls      [2]tlsWalker
	pending  []pendingCommand
	overflow bool // pending overflowed: pairing may be off, said once

	// The reply being read: its code while inside a multi-line reply, and
	// the announcement found in it so far.
	replyCode  int
	inMulti    bool
	replyAddr  netip.AddrPort
	replyPort  uint16
	replyFound bool
	replyErr   error

	inTLS    [2]bool // per direction: between an accepted AUTH and the return to clear text
	epsvAll  bool
	pinholes []*pinhole // open pinholes, oldest first
	ended    bool
}

// feed takes reassembled bytes of one direction.
func (s *Session) feed(dir int, data []byte, ts time.Time) {
	s.Last = ts
	if s.ended {
		return
	}
	for len(data) > 0 {
		if s.inTLS[dir] {
			clear, ok := s.tls[dir].walk(data)
			if !ok {
				return
			}
			s.leaveTLS(dir)
			data = clear
			continue
		}
		var tooLong int
		data, tooLong = s.lines[dir].feed(data, func(line []byte) bool {
			s.tracker.stats.Lines++
			if dir == fromClient {
				s.clientLine(line, ts)
			} else {
				s.serverLine(line, ts)
			}
			return !s.inTLS[dir] // stop splitting where TLS begins
		})
		if tooLong > 0 {
			s.tracker.stats.LinesTooLong += uint64(tooLong)
			s.tracker.log.Warn("control line too long, dropped unparsed", "session", s.ID,
				"from", dirName(dir), "limit", s.lines[dir].max)
		}
	}
}

func dirName(dir int) string {
	if dir == fromClient {
		return "client"
	}
	return "server"
}

func (s *Session) enterTLS() {
	s.inTLS = [2]bool{true, true}
	s.tls = [2]tlsWalker{}
	for d := range s.lines {
		s.lines[d].buf = s.lines[d].buf[:0]
		s.lines[d].discarding = false
	}
	s.pending = s.pending[:0]
	s.tracker.log.Info("session encrypted: AUTH accepted, no longer parsed until it returns to clear text",
		"session", s.ID)
}

// leaveTLS is called for each direction that left TLS (RFC 4217 CCC);
// each resumes parsing at its first clear-text byte.
func (s *Session) leaveTLS(dir int) {
	s.inTLS[dir] = false
	if dir == fromServer {
		s.inMulti = false
	} else {
		s.pending = s.pending[:0]
	}
	if !s.inTLS[fromClient] && !s.inTLS[fromServer] {
		s.tracker.log.Info("session back in clear text after TLS (CCC), parsing again", "session", s.ID)
	}
}

// gap is called when bytes of a direction were lost (buffer limit, a
// segment the capture missed): resume at the next line boundary.
//
// Lost bytes may have held a command or a reply, so the pairing of
// replies with commands can no longer be trusted: the pending commands
// are dropped. A reply in flight then finds no command and is refused,
// and the next exchange pairs correctly again, instead of every later
// reply answering the wrong command.
func (s *Session) gap(dir int) {
	s.pickUp(dir)
	s.pending = s.pending[:0]
}

// pickUp starts a direction whose beginning was not seen (the session was
// running before ftpgate): parsing starts at its next line boundary.
func (s *Session) pickUp(dir int) {
	if !s.inTLS[dir] {
		s.lines[dir].resync()
	}
	if dir == fromServer {
		s.inMulti = false
	}
}

func (s *Session) clientLine(line []byte, ts time.Time) {
	cmd, err := parser.ParseCommand(line)
	if cmd.Verb.IsData() {
		// A new data command supersedes every pinhole not yet used.
		s.tracker.closeSessionPinholes(s, "superseded by a new data command")
	}
	if err != nil {
		s.tracker.stats.Malformed++
		s.tracker.log.Info("malformed command ignored", "session", s.ID, "verb", cmd.Verb, "error", err)
	}
	if len(s.pending) == maxPending {
		s.popPending()
		s.tracker.stats.PendingOverflow++
		if !s.overflow {
			s.overflow = true
			s.tracker.log.Warn("too many commands without reply; dropping the oldest, pairing may be off",
				"session", s.ID, "limit", maxPending)
		}
	}
	s.pending = append(s.pending, pendingCommand{verb: cmd.Verb, cmd: cmd, valid: err == nil, time: ts})
}

func (s *Session) serverLine(line []byte, ts time.Time) {
	rl := parser.ParseReplyLine(line)
	if s.inMulti {
		if rl.Code == s.replyCode && !rl.More {
			s.scanReply(rl.Text)
			s.inMulti = false
			s.reply(rl.Code, ts)
			return
		}
		s.scanReply(line)
		return
	}
	if rl.Code == 0 {
		return // not a reply line; nothing to pair it with
	}
	s.replyCode = rl.Code
	s.replyFound, s.replyErr = false, nil
	s.scanReply(rl.Text)
	if rl.More {
		s.inMulti = true
		return
	}
	s.reply(rl.Code, ts)
}

// scanReply looks for the announcement of a 227, 228 or 229 reply in one
// of its lines; the first line that holds one wins.
func (s *Session) scanReply(text []byte) {
	if s.replyFound {
		return
	}
	var err error
	switch s.replyCode {
	case 227:
		s.replyAddr, err = parser.ParsePASVReply(text)
	case 228:
		s.replyAddr, err = parser.ParseLPSVReply(text)
	case 229:
		s.replyPort, err = parser.ParseEPSVReply(text)
	default:
		return
	}
	if err == nil {
		s.replyFound, s.replyErr = true, nil
	} else if s.replyErr == nil {
		s.replyErr = err
	}
}

// reply handles a complete reply with its final code.
func (s *Session) reply(code int, ts time.Time) {
	if code < 200 {
		return // preliminary: the command still waits for its final reply
	}
	var cmd pendingCommand
	havePending := len(s.pending) > 0
	if havePending {
		cmd = s.popPending()
	}
	switch code {
	case 227, 228, 229:
		s.passiveReply(code, cmd, havePending, ts)
		return
	}
	if !havePending {
		return
	}
	switch {
	case cmd.verb.IsActive() && cmd.valid:
		ch := s.channel(cmd.cmd, ts)
		if code >= 200 && code < 300 {
			s.tracker.decide(s, ch, s.Client.Addr())
		} else {
			s.tracker.refuse(s, ch, fmt.Sprintf("server refused %s with %d", cmd.verb, code))
		}
	case cmd.verb == parser.VerbAUTH && code == 234:
		s.enterTLS()
	case cmd.verb == parser.VerbEPSV && cmd.cmd.All && code >= 200 && code < 300:
		s.epsvAll = true
	case cmd.verb == parser.VerbQUIT && code == 221:
		s.tracker.closeSessionPinholes(s, "session quit")
	}
}

// channel builds the record of an active-mode announcement: the server
// will connect to the address the client wrote.
func (s *Session) channel(cmd parser.Command, ts time.Time) Channel {
	return Channel{
		Time: ts, Session: s.ID, Command: cmd.Verb, Passive: false,
		OrigH: s.Server.Addr(), RespH: cmd.Endpoint.Addr(), RespP: cmd.Endpoint.Port(),
		Client: s.Client, Server: s.Server,
	}
}

func (s *Session) passiveReply(code int, cmd pendingCommand, havePending bool, ts time.Time) {
	verb := map[int]parser.Verb{227: parser.VerbPASV, 228: parser.VerbLPSV, 229: parser.VerbEPSV}[code]
	if !s.replyFound {
		if s.replyErr != nil {
			s.tracker.stats.Malformed++
			s.tracker.log.Info("malformed reply ignored", "session", s.ID, "code", code, "error", s.replyErr)
		}
		return
	}
	ch := Channel{
		Time: ts, Session: s.ID, Command: verb, Passive: true,
		OrigH: s.Client.Addr(), RespH: s.replyAddr.Addr(), RespP: s.replyAddr.Port(),
		Client: s.Client, Server: s.Server,
	}
	if code == 229 {
		ch.RespH, ch.RespP = s.Server.Addr(), s.replyPort
	}
	switch {
	case !havePending:
		s.tracker.refuse(s, ch, fmt.Sprintf("%d reply without a %s from the client", code, verb))
	case cmd.verb != verb || (verb == parser.VerbEPSV && cmd.cmd.All):
		s.tracker.refuse(s, ch, fmt.Sprintf("%d reply answers %s, not %s", code, cmd.verb, verb))
	default:
		s.tracker.decide(s, ch, s.Server.Addr())
	}
}

// end is called once when the control connection is gone.
func (s *Session) end(reason string) {
	if s.ended {
		return
	}
	s.ended = true
	for _, c := range s.pending {
		if c.verb.IsActive() && c.valid {
			s.tracker.refuse(s, s.channel(c.cmd, c.time), "no reply from the server before the session ended")
		}
	}
	s.pending = nil
	s.lines = [2]lineSplitter{}
	s.tracker.closeSessionPinholes(s, reason)
}

// popPending removes and returns the oldest pending command. It shifts
// the rest down rather than reslicing, so the queue keeps its array and
// the next command costs no allocation; there are at most maxPending.
func (s *Session) popPending() pendingCommand {
	c := s.pending[0]
	n := copy(s.pending, s.pending[1:])
	s.pending[n] = pendingCommand{}
	s.pending = s.pending[:n]
	return c
}
