package conntrack

import (
	"net/netip"
	"time"
)

// FTPSRange is an FTPS server's passive port range: while one of its
// control sessions is encrypted, that session's client may connect to
// these ports of this server, and only it.
type FTPSRange struct {
	Server netip.Prefix // one server (a /32 or /128) or several
	Lo, Hi uint16
}

// ActiveRange is the range of ports FTPS clients listen on in active
// mode (their ftp:port-range, FileZilla's "limit local ports"): an
// implicit FTPS server of theirs may connect from port 989 to these ports
// of theirs, and to no other, while their session is encrypted. The PORT
// that names the one port is inside TLS.
type ActiveRange struct {
	Client netip.Prefix
	Lo, Hi uint16
}

// Defaults of the FTPS caps.
const (
	DefaultMaxScopedPerClient = 8
	DefaultMaxScoped          = 4096
)

func ftpsRange(ranges []FTPSRange, server netip.Addr) (FTPSRange, bool) {
	for _, r := range ranges {
		if r.Server.Contains(server) {
			return r, true
		}
	}
	return FTPSRange{}, false
}

func activeRange(ranges []ActiveRange, client netip.Addr) (ActiveRange, bool) {
	for _, r := range ranges {
		if r.Client.Contains(client) {
			return r, true
		}
	}
	return ActiveRange{}, false
}

// ftpsState is where a session stands with TLS (RFC 4217): encrypted or
// not, each direction's TLS records, whether the handshake completed, and
// the scoped range it holds meanwhile.
type ftpsState struct {
	// on: an AUTH was accepted (or implicit FTPS): not parsed until TLS
	// has properly ended; clear, per direction: back in clear text after
	// a close_notify.
	on    bool
	clear [2]bool
	tls   [2]tlsWalker
	round tlsRoundState
	done  bool // the handshake completed
	// scoped: the range while encrypted; scopeTried: this stretch of
	// TLS was given one or refused already.
	scoped     *scopedState
	scopeTried bool
	implicit   bool // encrypted from the first byte
	// When AUTH was accepted and CCC left TLS.
	authAt, cccAt time.Time
}

// tlsRoundState counts a TLS session's exchanges of data (see
// ftpsState.countRounds).
type tlsRoundState struct {
	clientEnd  uint32 // end of the client's latest data record not yet answered
	clientSent bool
	rounds     int
}

// encrypted reports whether direction d is inside TLS.
func (f *ftpsState) encrypted(d int) bool { return f.on && !f.clear[d] }

// start makes the session encrypted from the next byte on.
func (f *ftpsState) start() {
	f.on, f.clear = true, [2]bool{}
	f.tls = [2]tlsWalker{{hello: tlsClientHello}, {hello: tlsServerHello}}
	f.round = tlsRoundState{}
}

// tlsRoundsNeeded is how many exchanges of application data a session
// must make before its TLS handshake counts as completed.
const tlsRoundsNeeded = 3

// countRounds counts the exchanges of application data that follow the
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
func (f *ftpsState) countRounds(d int) {
	r := &f.round
	for _, rec := range f.tls[d].data {
		switch {
		case d == fromClient:
			r.clientEnd, r.clientSent = rec.end, true
		case r.clientSent && seqAtLeast(rec.ack, r.clientEnd):
			r.rounds++
			r.clientSent = false
		}
	}
}

// tlsVerdict is what the TLS seen so far says of an encrypted session.
type tlsVerdict uint8

const (
	tlsUndecided     tlsVerdict = iota
	tlsNotTLS                   // either side does not speak TLS
	tlsHandshakeDone            // both hellos, and enough rounds after
)

// verdict judges the TLS seen so far; a completed handshake is reported
// once.
func (f *ftpsState) verdict() tlsVerdict {
	switch {
	case !f.on:
	case f.tls[fromClient].opaque || f.tls[fromServer].opaque:
		return tlsNotTLS
	case !f.done && f.tls[fromClient].helloOK && f.tls[fromServer].helloOK && f.round.rounds >= tlsRoundsNeeded:
		f.done = true
		return tlsHandshakeDone
	}
	return tlsUndecided
}

// record is the record `ftpgate analyze` gives of s if it went
// encrypted.
func (f *ftpsState) record(s *Session, end time.Time) (EncryptedSession, bool) {
	if f.authAt.IsZero() && !f.implicit {
		return EncryptedSession{}, false
	}
	return EncryptedSession{Session: s.ID, Client: s.Client, Server: s.Server, Implicit: f.implicit,
		Start: s.Start, AuthAt: f.authAt, CCCAt: f.cccAt, End: end}, true
}

// startImplicit makes a session on an implicit FTPS port encrypted from
// its first byte; its range opens once the handshake has completed.
func (f *ftpsState) startImplicit() {
	f.implicit = true
	f.start()
}

// encryptedBytes takes bytes of direction d inside TLS: they go on (a
// session of the proxy) unparsed; what follows a close_notify is taken
// as clear text if the session may leave TLS. It returns the clear
// bytes, or false if there are none.
func (s *Session) encryptedBytes(d int, seq uint32, data []byte, ack uint32) ([]byte, uint32, bool) {
	clear, ok := s.ftps.tls[d].walk(data, seq, ack)
	s.ftps.countRounds(d)
	s.tlsProgress()
	n := len(data)
	if ok {
		n -= len(clear)
	}
	s.passOn(d, data[:n])
	if !ok || s.life.ended {
		return nil, 0, false
	}
	seq += uint32(n)
	if !s.leaveTLS(d, clear) {
		s.passOn(d, clear)
		return nil, 0, false
	}
	return clear, seq, true
}

// enterTLS is called when the server accepts AUTH (234).
func (s *Session) enterTLS() {
	s.ftps.start()
	s.ftps.scopeTried, s.ftps.done = false, false
	for d := range s.lines {
		s.lines[d].reset()
	}
	s.reply.inMulti = false
	s.pair.dropPending(s, refusedEncrypted, "sent after AUTH, when the session became encrypted")
	s.ftps.authAt = s.env.now
	s.host.openScoped(s, "AUTH accepted: the announcements are inside TLS", false)
	s.env.log.Info("session encrypted: AUTH accepted, no longer parsed until TLS ends after an accepted CCC",
		"session", s.ID)
}

// tlsProgress follows an encrypted session's TLS: its scoped range opens
// once the handshake has completed in both directions (implicit FTPS),
// and closes as soon as either side is found not to speak TLS.
func (s *Session) tlsProgress() {
	switch s.ftps.verdict() {
	case tlsNotTLS:
		s.host.closeScoped(s, closedNotTLS, "the session does not speak TLS")
	case tlsHandshakeDone:
		why := "the TLS handshake completed"
		if s.ftps.implicit {
			why = "implicit FTPS: the TLS handshake completed"
		}
		s.host.openScoped(s, why, true)
	}
}

// leaveTLS decides whether the clear text that follows a direction's
// close_notify is to be parsed. The server's is, once it shows: the
// server ends TLS only after it has accepted CCC. The client's only once
// the server has ended TLS too; before, it is dropped unparsed.
func (s *Session) leaveTLS(d int, clear []byte) bool {
	f := &s.ftps
	if d == fromClient && !f.tls[fromServer].closed() && !f.clear[fromServer] {
		s.lines[d].resync()
		return false
	}
	look := looksLikeCommand
	if d == fromServer {
		look = looksLikeReply
	}
	if !look(clear) {
		f.tls[d].opaque = true
		s.tlsProgress()
		return false
	}
	first := !f.clear[fromClient] && !f.clear[fromServer]
	f.clear[d] = true
	s.lines[d].reset()
	if d == fromServer {
		s.reply.inMulti = false
	}
	if first {
		// What was said inside TLS is unknown.
		s.pair.outOfStep(s, "the session left TLS")
	}
	if f.clear[fromClient] && f.clear[fromServer] {
		f.on, f.clear = false, [2]bool{}
		f.cccAt = s.env.now
		s.host.closeScoped(s, closedCCC, "the session left TLS (CCC): exact pinholes again")
		s.env.log.Info("session back in clear text after TLS (CCC), parsing again", "session", s.ID)
	}
	return true
}
