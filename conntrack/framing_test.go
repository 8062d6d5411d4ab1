package conntrack

import (
	"net/netip"
	"strings"
	"testing"
)

// TestEchoAfterBareLFStartsNoReply: a server that ends its lines with CR
// LF and echoes a client's argument with its raw LFs writes a line that
// looks like a 227 inside one reply. Pipelined behind a PASV while
// pairing is out of step, that 227 would pair with the PASV and open the
// server's port 5432; it starts no reply, and the PASV's own 227 opens
// its own port.
func TestEchoAfterBareLFStartsNoReply(t *testing.T) {
	h, c := session(t, Config{})
	// Out of step: a 227 that answered a NOOP.
	h.feed(c.send(true, "NOOP\r\n"), c.send(false, "227 Entering Passive Mode (198,51,100,20,1,1)\r\n"))
	h.feed(c.send(true, "MKD x\n227 Entering Passive Mode (198,51,100,20,21,56)\n150 x\r\nPASV\r\n"))
	h.feed(c.send(false, "257 \"x\n227 Entering Passive Mode (198,51,100,20,21,56)\n150 x\" created\r\n"+
		"227 Entering Passive Mode (198,51,100,20,156,80)\r\n"))
	if h.open()[pin("192.0.2.10", "198.51.100.20", 21*256+56)] {
		t.Fatalf("the echoed 227 opened the server's port 5432: %v", h.open())
	}
	if !h.open()[pin("192.0.2.10", "198.51.100.20", 156*256+80)] {
		t.Fatalf("the PASV's own 227 did not open: %v", h.open())
	}
	if h.tr.Stats().NotReplyStart == 0 {
		t.Errorf("the line after the bare LF was not counted")
	}
}

// TestEchoFromBareLFServer: a server that ends its lines with a bare LF
// (learnt from its greeting) is split at every LF, so an echo of the
// client's argument is a line like any reply: once the client has sent
// text that looks like a reply (at a line start, after a CR or a NUL),
// nothing of that session opens, however many such pieces it sends. A
// session whose client sent none works with the same server.
func TestEchoFromBareLFServer(t *testing.T) {
	lfSession := func(t *testing.T) (*harness, *conn) {
		h := newHarness(t, Config{})
		c := newConn(t, cli, srv)
		h.feed(c.handshake()...)
		h.feed(c.send(false, "220-Welcome\r\n220 ready\n"))
		return h, c
	}
	for _, arg := range []string{
		"x\x00227 Entering Passive Mode (198,51,100,20,21,56)",
		"x\r227 Entering Passive Mode (198,51,100,20,21,56)\r111 a\r111 b\r111 c\r111 d\r111 e",
	} {
		h, c := lfSession(t)
		h.feed(c.send(true, "MKD "+arg+"\r\nPASV\r\n"))
		h.feed(c.send(false, "257 \""+strings.NewReplacer("\x00", "\n", "\r", "\n").Replace(arg)+"\" created\n"+
			"227 Entering Passive Mode (198,51,100,20,156,81)\n"))
		if len(h.open()) != 0 {
			t.Fatalf("%q: pinholes %v after the client sent reply-like text to an LF server", arg, h.open())
		}
	}
	h, c := lfSession(t)
	h.feed(c.send(true, "PASV\r\n"), c.send(false, "227 Entering Passive Mode (198,51,100,20,156,82)\n"))
	if !h.open()[pin("192.0.2.10", "198.51.100.20", 156*256+82)] {
		t.Fatalf("an LF server's 227 to an ordinary client did not open: %v", h.open())
	}
}

// TestEOLLearntFromTheGreetingsEnd: a CR LF server whose banner lines
// end in bare LF is learnt as CR LF from its greeting's last line, and a
// line after a bare LF in a later reply starts nothing.
func TestEOLLearntFromTheGreetingsEnd(t *testing.T) {
	h := newHarness(t, Config{})
	c := newConn(t, cli, srv)
	h.feed(c.handshake()...)
	h.feed(c.send(false, "220-Welcome\n220-to the banner\n220 ready\r\n"))
	h.feed(c.send(true, "NOOP\r\n"), c.send(false, "227 Entering Passive Mode (198,51,100,20,1,1)\r\n"))
	h.feed(c.send(true, "MKD x\n227 Entering Passive Mode (198,51,100,20,21,56)\r\nPASV\r\n"))
	h.feed(c.send(false, "257 \"x\n227 Entering Passive Mode (198,51,100,20,21,56)\" created\r\n227 Entering Passive Mode (198,51,100,20,156,83)\r\n"))
	if h.open()[pin("192.0.2.10", "198.51.100.20", 21*256+56)] || !h.open()[pin("192.0.2.10", "198.51.100.20", 156*256+83)] {
		t.Fatalf("pinholes %v", h.open())
	}
}

// TestLinesTooLongAreNeverParsed: with --max-line 64, a command of more
// than 64 bytes that ends in a PORT, and a reply whose tail after a bare
// LF is a 227, open nothing however they are cut into segments; a PASV
// after them still pairs.
func TestLinesTooLongAreNeverParsed(t *testing.T) {
	junk := strings.Repeat("x", 100)
	h, c := session(t, Config{MaxLineLength: 64})
	line := junk + " PORT 192,0,2,10,31,144\r\n"
	for i := 0; i < len(line); i += 30 {
		h.feed(c.send(true, line[i:min(i+30, len(line))]))
	}
	h.feed(c.send(false, "500 "+junk+"\n227 Entering Passive Mode (198,51,100,20,21,56)\r\n"))
	h.feed(c.send(true, "PASV\r\n"), c.send(false, "227 Entering Passive Mode (198,51,100,20,156,82)\r\n"))
	if len(h.open()) != 1 || !h.open()[pin("192.0.2.10", "198.51.100.20", 156*256+82)] {
		t.Fatalf("pinholes %v, want only the PASV's", h.open())
	}
	if st := h.tr.Stats(); st.LinesTooLong != 2 {
		t.Errorf("%d lines counted too long, want 2", st.LinesTooLong)
	}
}

// TestBareLFCommands: a server may or may not end a command at a bare
// LF, so a PORT ended so never opens; a PASV ended so still pairs with
// the 227 that names it.
func TestBareLFCommands(t *testing.T) {
	h, c := session(t, Config{})
	h.feed(c.send(true, "PORT 192,0,2,10,200,1\n"), c.send(false, "200 ok\r\n"))
	if len(h.open()) != 0 || h.lastChannel().Refusal != refusedPairingUncertain {
		t.Fatalf("a PORT ended by a bare LF: pinholes %v, last %+v", h.open(), h.lastChannel())
	}
	h.feed(c.send(true, "PASV\n"), c.send(false, "227 Entering Passive Mode (198,51,100,20,156,83)\r\n"))
	if !h.open()[pin("192.0.2.10", "198.51.100.20", 156*256+83)] {
		t.Fatalf("a PASV ended by a bare LF did not pair: %v", h.open())
	}
}

// TestEmptyLinesAreCheap: a flood of empty lines is framed in runs, not
// one line at a time; it leaves pairing out of step at worst, and a
// session that then waits for each reply is back in step at its next
// command.
func TestEmptyLinesAreCheap(t *testing.T) {
	h, c := session(t, Config{})
	for range 100 {
		h.feed(c.send(true, strings.Repeat("\n", 1400)))
	}
	if n := h.tr.Stats().Lines; n < 140000 {
		t.Fatalf("%d lines counted, want the 140000 empty ones", n)
	}
	s := h.tr.sessions.tracked[makeConnKey(c.client, c.server)]
	if n := len(s.pair.pending); n > 2 {
		t.Errorf("%d entries pending for empty lines, want them in one run", n)
	}
	// The server answers each; then a quiet PORT opens again.
	h.feed(c.send(false, strings.Repeat("500 Unknown command.\r\n", 300)))
	h.feed(c.send(true, "PORT 192,0,2,10,200,9\r\n"), c.send(false, "200 ok\r\n"))
	if !h.open()[pin("198.51.100.20", "192.0.2.10", 200*256+9)] {
		t.Errorf("a PORT at a quiet point after the flood did not open: %v", h.open())
	}
}

// Test234AnswersOnlyAUTH: a 234 that answers no AUTH (the greeting, a
// NOOP's reply) does not make the session encrypted: it opens no scoped
// range, and the session is still parsed.
func Test234AnswersOnlyAUTH(t *testing.T) {
	cfg := Config{FTPSRanges: []FTPSRange{{Server: netip.MustParsePrefix("198.51.100.20/32"), Lo: 30000, Hi: 30099}}}
	t.Run("greeting", func(t *testing.T) {
		h := newHarness(t, cfg)
		c := newConn(t, cli, srv)
		h.feed(c.handshake()...)
		h.feed(c.send(false, "234 Proceed\r\n"))
		h.feed(c.send(true, "PASV\r\n"), c.send(false, "227 Entering Passive Mode (198,51,100,20,156,84)\r\n"))
		if len(h.fw.Scoped) != 0 || !h.open()[pin("192.0.2.10", "198.51.100.20", 156*256+84)] {
			t.Fatalf("scoped %v, pinholes %v: a 234 greeting was taken as TLS", h.fw.Scoped, h.open())
		}
	})
	t.Run("reply to NOOP", func(t *testing.T) {
		h, c := session(t, cfg)
		h.feed(c.send(true, "NOOP\r\n"), c.send(false, "234 Proceed\r\n"))
		h.feed(c.send(true, "PASV\r\n"), c.send(false, "227 Entering Passive Mode (198,51,100,20,156,85)\r\n"))
		if len(h.fw.Scoped) != 0 || !h.open()[pin("192.0.2.10", "198.51.100.20", 156*256+85)] {
			t.Fatalf("scoped %v, pinholes %v: a 234 to NOOP was taken as TLS", h.fw.Scoped, h.open())
		}
		if h.tr.Stats().UnsolicitedAuth != 1 {
			t.Errorf("unsolicited 234 not counted")
		}
	})
}
