package conntrack

import (
	"bytes"
	"fmt"
	"github.com/ftpgate/ftpgate/internal/inetsum"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// Tests of what may count: only bytes the endpoints really exchanged may
// open a pinhole, and a reply opens only what it answered.

func TestBadChecksumsIgnored(t *testing.T) {
	h, c := session(t, Config{})
	h.feed(badSum(c.send(true, "PASV\r\n")), badSum(c.send(false, "227 Entering Passive Mode (198,51,100,20,8,174)\r\n")))
	if len(h.open()) != 0 {
		t.Fatalf("opened from segments with bad checksums: %v", h.open())
	}
	if n := h.tr.Stats().BadChecksums; n != 2 {
		t.Errorf("BadChecksums = %d, want 2", n)
	}
	// The same exchange with checksums left to the hardware (the pseudo-
	// header sum in the field, as captured on an offloading host) counts.
	c.cseq, c.sseq = c.cseq-6, c.sseq-uint32(len("227 Entering Passive Mode (198,51,100,20,8,174)\r\n"))
	h.feed(offloaded(c.send(true, "PASV\r\n")), offloaded(c.send(false, "227 Entering Passive Mode (198,51,100,20,8,174)\r\n")))
	if !h.open()[pin("192.0.2.10", "198.51.100.20", 8*256+174)] {
		t.Errorf("offloaded checksums mistaken for bad ones: %v", h.open())
	}
}

// offloaded replaces a frame's TCP checksum with the folded pseudo-header
// sum, as a sender with checksum offload leaves it.
func offloaded(frame []byte) []byte {
	p := append([]byte(nil), frame...)
	ip := p[14:]
	ihl := int(ip[0]&0x0f) * 4
	tlen := len(ip) - ihl
	ps := inetsum.Fold(inetsum.Sum(ip[12:20], uint32(6)+uint32(tlen)))
	ip[ihl+16], ip[ihl+17] = byte(ps>>8), byte(ps)
	return p
}

// A forged PORT with a bad checksum, then the benign command the server
// really received at the same sequence number: the server's 200 answers
// the NOOP.
func TestBadChecksumThenBenignBytes(t *testing.T) {
	h, c := session(t, Config{})
	seq := c.cseq
	h.feed(badSum(c.send(true, "PORT 192,0,2,10,13,61\r\n")))
	c.cseq = seq
	h.feed(c.send(true, "NOOP xxxxxxxxxxxxxxxxx\r\n")) // same length
	h.feed(c.send(false, "200 NOOP ok.\r\n"))
	if len(h.open()) != 0 {
		t.Fatalf("forged PORT paired with the NOOP's reply: %v", h.open())
	}
}

// Two valid copies of the same bytes that differ: which one the server
// took is unknown, so the reply opens nothing.
func TestConflictingCopiesNeverPair(t *testing.T) {
	h, c := session(t, Config{})
	seq := c.cseq
	h.feed(c.segment(true, seq, c.sseq, "A", []byte("PORT 192,0,2,10,13,61\r\n")))
	h.feed(c.segment(true, seq, c.sseq, "A", []byte("NOOP xxxxxxxxxxxxxxxxx\r\n")))
	c.cseq += uint32(len("PORT 192,0,2,10,13,61\r\n"))
	h.feed(c.send(false, "200 ok.\r\n"))
	if len(h.open()) != 0 {
		t.Fatalf("opened a command with conflicting copies: %v", h.open())
	}
	if h.tr.Stats().Conflicts != 1 {
		t.Errorf("Conflicts = %d, want 1", h.tr.Stats().Conflicts)
	}
	ch := h.lastChannel()
	if ch.Verdict != VerdictRefuse || !strings.Contains(ch.Reason, "differ") {
		t.Errorf("got %v %q, want a refusal naming the conflict", ch.Verdict, ch.Reason)
	}
}

// A PORT far beyond the server's receive window, then a real command:
// the server's reply answers the real command only.
func TestOutOfWindowIgnored(t *testing.T) {
	h, c := session(t, Config{})
	h.feed(c.segment(true, c.cseq+3<<20, c.sseq, "A", []byte("PORT 192,0,2,10,13,61\r\n")))
	h.feed(c.send(true, "NOOP\r\n"), c.send(false, "200 NOOP ok.\r\n"))
	h.tr.Expire(h.ts.Add(10 * time.Second))
	h.feed(c.send(true, "NOOP\r\n"), c.send(false, "200 NOOP ok.\r\n"))
	if len(h.open()) != 0 || len(h.channels) != 0 {
		t.Fatalf("a PORT outside the window counted: open %v, channels %+v", h.open(), h.channels)
	}
	if h.tr.Stats().OutOfWindow != 1 {
		t.Errorf("OutOfWindow = %d, want 1", h.tr.Stats().OutOfWindow)
	}
}

// A command in a segment the server never acknowledged cannot be what a
// reply answers, even when the reply comes next.
func TestUnacknowledgedCommandNeverPairs(t *testing.T) {
	h, c := session(t, Config{})
	before := c.cseq
	h.feed(c.send(true, "PORT 192,0,2,10,13,61\r\n"))
	// The server's 200 acknowledges nothing of it: it answers something
	// else (here: nothing ftpgate saw; a reply written before).
	h.feed(c.sendAck(false, before, "200 ok.\r\n"))
	if len(h.open()) != 0 {
		t.Fatalf("a reply paired with a command its server had not received: %v", h.open())
	}
	// Its real reply comes later and does pair.
	h.feed(c.send(false, "500 no.\r\n"))
	ch := h.lastChannel()
	if ch.Verdict != VerdictRefuse || !strings.Contains(ch.Reason, "server refused PORT with 500") {
		t.Errorf("got %v %q, want the PORT refused by its own reply", ch.Verdict, ch.Reason)
	}
}

// A PORT sent before the greeting is answered after it, even when the
// greeting's segment acknowledges it.
func TestGreetingConsumedFirst(t *testing.T) {
	h := newHarness(t, Config{})
	c := newConn(t, cli, srv)
	h.feed(c.handshake()...)
	h.feed(c.send(true, "PORT 192,0,2,10,13,61\r\n"))
	h.feed(c.send(false, "220 ready\r\n"))
	if len(h.open()) != 0 {
		t.Fatalf("the greeting accepted a PORT: %v", h.open())
	}
	h.feed(c.send(false, "530 Please login with USER and PASS.\r\n"))
	ch := h.lastChannel()
	if ch.Verdict != VerdictRefuse || !strings.Contains(ch.Reason, "530") {
		t.Errorf("got %v %q, want the PORT refused with 530", ch.Verdict, ch.Reason)
	}
}

// 64 pipelined NOOPs and a PORT the server refused: every reply answers
// its own command.
func TestPipelinedCommandsPastTheCap(t *testing.T) {
	h, c := session(t, Config{})
	h.feed(c.send(true, strings.Repeat("NOOP\r\n", 64)+"PORT 192,0,2,10,13,61\r\n"))
	h.feed(c.send(false, strings.Repeat("200 NOOP ok.\r\n", 64)+"500 Illegal PORT command.\r\n"))
	if len(h.open()) != 0 {
		t.Fatalf("opened a PORT the server refused: %v", h.open())
	}
	// Pairing is still exact: the next exchange pairs.
	h.feed(c.send(true, "PASV\r\n"), c.send(false, "227 Entering Passive Mode (198,51,100,20,8,174)\r\n"))
	if !h.open()[pin("192.0.2.10", "198.51.100.20", 8*256+174)] {
		t.Errorf("pairing lost after commands past the cap: %v", h.open())
	}
}

// Every well-formed announcement is reported, past the cap too.
func TestEveryUnansweredPortReported(t *testing.T) {
	h, c := session(t, Config{})
	var b strings.Builder
	for i := range 500 {
		fmt.Fprintf(&b, "PORT 192,0,2,10,%d,%d\r\n", 100+i/256, i%256)
	}
	h.feed(c.send(true, b.String()))
	h.feed(c.packet(true, c.cseq, "RA", nil))
	if len(h.channels) != 500 {
		t.Fatalf("%d channels reported, want 500", len(h.channels))
	}
	for _, ch := range h.channels {
		if ch.Verdict != VerdictRefuse || ch.Reason == "" {
			t.Fatalf("channel %+v: want refused with a reason", ch)
		}
	}
}

func TestPlaintextAfterAuthStaysEncrypted(t *testing.T) {
	h, c := session(t, Config{})
	h.feed(c.send(true, "AUTH TLS\r\n"), c.send(false, "234 Proceed with negotiation.\r\n"))
	h.feed(c.send(true, "PORT 192,0,2,10,13,61\r\n"), c.send(false, "200 PORT command successful.\r\n"))
	h.feed(c.send(true, "PASV\r\n"), c.send(false, "227 Entering Passive Mode (198,51,100,20,8,174)\r\n"))
	if len(h.open()) != 0 || len(h.channels) != 0 {
		t.Fatalf("plain text after AUTH parsed: %+v", h.channels)
	}
}

// The client's clear text after its own close_notify is not parsed
// while the server is still in TLS: only the server's end of TLS shows
// that it accepted CCC.
func TestClientLeavingTLSAloneIsNotClear(t *testing.T) {
	h, c := session(t, Config{})
	h.feed(c.send(true, "AUTH TLS\r\n"), c.send(false, "234 Proceed with negotiation.\r\n"))
	rec := func(typ byte, body string) string {
		return string([]byte{typ, 3, 3, byte(len(body) >> 8), byte(len(body))}) + body
	}
	h.feed(c.send(true, rec(0x16, "\x01client hello")), c.send(false, rec(0x16, "\x02server hello")))
	h.feed(c.send(true, rec(0x15, "close")+"PORT 192,0,2,10,13,61\r\n"), c.send(false, rec(0x17, strings.Repeat("x", 40))))
	h.feed(c.send(false, rec(0x17, "200 PORT command successful.......")))
	if len(h.channels) != 0 {
		t.Fatalf("client clear text parsed while the server was in TLS: %+v", h.channels)
	}
}

func TestForgedResetIgnored(t *testing.T) {
	h, c := session(t, Config{})
	h.feed(c.packet(false, c.sseq+0x40000000, "RA", nil))
	h.feed(c.send(true, "PASV\r\n"), c.send(false, "227 Entering Passive Mode (198,51,100,20,8,174)\r\n"))
	if !h.open()[pin("192.0.2.10", "198.51.100.20", 8*256+174)] {
		t.Fatalf("a reset with a random sequence number ended the session: %v", h.open())
	}
	if n := h.tr.Stats().OutOfWindow; n != 1 {
		t.Errorf("OutOfWindow = %d, want 1", n)
	}
	h.feed(badSum(c.packet(false, c.sseq, "RA", nil)))
	if h.tr.Stats().SessionsTracked != 1 {
		t.Fatal("a reset with a bad checksum ended the session")
	}
	h.feed(c.packet(false, c.sseq, "RA", nil))
	if h.tr.Stats().SessionsTracked != 0 {
		t.Error("a valid reset did not end the session")
	}
}

// Half-open connections have a cap and a timer of their own, so that the
// session cap stays free for FTP.
func TestHalfOpenCannotHoldTheSessionCap(t *testing.T) {
	h := newHarness(t, Config{MaxSessions: 2, MaxHalfOpen: 50, HandshakeTimeout: 10 * time.Second})
	for i := range 100 {
		c := newConn(t, fmt.Sprintf("192.0.2.%d:40000", 100+i), srv)
		h.feed(c.packet(true, c.cseq, "S", nil))
	}
	st := h.tr.Stats()
	if st.HalfOpen != 50 || st.HalfOpenRefused != 50 {
		t.Fatalf("half-open %d, refused %d; want 50 and 50", st.HalfOpen, st.HalfOpenRefused)
	}
	// A real session during the flood: picked up from its first data,
	// counted against MaxSessions, which half-open ones do not hold.
	c := newConn(t, cli, srv)
	h.feed(c.greeted()...)
	h.feed(c.send(true, "PASV\r\n"), c.send(false, "227 Entering Passive Mode (198,51,100,20,8,174)\r\n"))
	if !h.open()[pin("192.0.2.10", "198.51.100.20", 8*256+174)] {
		t.Fatalf("FTP during a flood of half-open connections failed: %v", h.open())
	}
	h.tr.Expire(h.ts.Add(11 * time.Second))
	if err := h.tr.Commit(); err != nil {
		t.Fatal(err)
	}
	if st := h.tr.Stats(); st.HalfOpen != 0 || st.HalfOpenExpired != 50 || st.SessionsTracked != 1 {
		t.Errorf("after the handshake timeout: %+v", st)
	}
	if len(h.fw.Peers) != 1 {
		t.Errorf("peers of expired half-open connections left: %d", len(h.fw.Peers))
	}
	// A connection that completes its handshake but sends nothing.
	c2 := newConn(t, "192.0.2.11:40000", srv)
	h.feed(c2.handshake()...) // at the time of the last Expire
	h.tr.Expire(h.ts.Add(22 * time.Second))
	if st := h.tr.Stats(); st.SessionsTracked != 1 {
		t.Errorf("a silent connection outlived the handshake timeout: %+v", st)
	}
}

func TestEPRTBehindDestinationOptions(t *testing.T) {
	h := newHarness(t, Config{})
	c := newConn(t, "[2001:db8::10]:40000", "[2001:db8:1::20]:21")
	for _, p := range c.greeted() {
		h.feed(withDestOpts(p))
	}
	h.feed(withDestOpts(c.send(true, "EPRT |2|2001:db8::10|40001|\r\n")), withDestOpts(c.send(false, "200 EPRT command successful.\r\n")))
	if want := pin("2001:db8:1::20", "2001:db8::10", 40001); !h.open()[want] {
		t.Fatalf("EPRT behind a destination options header: open = %v, want %v", h.open(), want)
	}
}

func TestLineOfExactlyMaxLength(t *testing.T) {
	const max = 64
	h, c := session(t, Config{MaxLineLength: max})
	reply := "227 Entering Passive Mode (198,51,100,20,8,174)"
	reply += strings.Repeat(".", max-len(reply))
	h.feed(c.send(true, "PASV\r\n"), c.send(false, reply+"\r\n"))
	if !h.open()[pin("192.0.2.10", "198.51.100.20", 8*256+174)] {
		t.Fatalf("a line of exactly --max-line bytes was not parsed: %v", h.open())
	}
	h.feed(c.send(true, "PASV\r\n"), c.send(false, reply+".\r\n"))
	if h.tr.Stats().LinesTooLong != 1 {
		t.Errorf("a line one byte longer: LinesTooLong = %d, want 1", h.tr.Stats().LinesTooLong)
	}
}

// A session picked up at a segment that starts at a line boundary: the
// first line is not thrown away, in either direction.
func TestPickupAtLineBoundary(t *testing.T) {
	h := newHarness(t, Config{})
	c := newConn(t, cli, srv)
	c.cseq, c.sseq = 777, 888
	h.feed(c.send(true, "PASV\r\n"), c.send(false, "227 Entering Passive Mode (198,51,100,20,8,174)\r\n"))
	if !h.open()[pin("192.0.2.10", "198.51.100.20", 8*256+174)] {
		t.Fatalf("first lines of a picked-up session lost: %v", h.open())
	}
	// The next exchange is at a quiet point: active mode works again.
	h.feed(c.send(true, "PORT 192,0,2,10,13,61\r\n"), c.send(false, "200 ok\r\n"))
	if !h.open()[pin("198.51.100.20", "192.0.2.10", 13*256+61)] {
		t.Errorf("pairing not back in step after a pickup: %v", h.open())
	}
}

// After a lost client segment, every 227 pairs with its PASV, within one
// exchange and for the rest of a long session, and pairing is back in
// step at once; but no reply can be proven to answer a PORT any more (a
// pipelining client could keep a lost command unanswered), so active mode
// is refused, with that reason, not for a wrong pairing.
func TestLossEarlyInALongSession(t *testing.T) {
	h, c := session(t, Config{})
	c.send(true, "CWD /pub\r\n") // lost on the way to ftpgate
	h.feed(c.send(false, "250 Directory successfully changed.\r\n"))
	h.tr.Expire(h.ts.Add(2 * time.Second))
	for i := range 200 {
		port := uint16(10000 + i)
		if i%2 == 0 {
			h.feed(c.send(true, "PASV\r\n"), c.send(false, fmt.Sprintf("227 Entering Passive Mode (198,51,100,20,%d,%d)\r\n", port>>8, port&0xff)))
			if !h.open()[pin("192.0.2.10", "198.51.100.20", port)] {
				t.Fatalf("exchange %d: PASV not opened: %v", i, h.open())
			}
		} else {
			h.feed(c.send(true, fmt.Sprintf("PORT 192,0,2,10,%d,%d\r\n", port>>8, port&0xff)), c.send(false, "200 PORT command successful.\r\n"))
			ch := h.lastChannel()
			if ch.RespP != port || ch.Verdict != VerdictRefuse || !strings.Contains(ch.Reason, "active mode refused on this session: bytes from the client were lost") {
				t.Fatalf("exchange %d: %+v, want this PORT refused for the lost bytes", i, ch)
			}
		}
		h.feed(c.send(true, "NOOP\r\n"), c.send(false, "200 NOOP ok.\r\n"))
	}
}

// Inline, where copies come in the kernel's order, a lost copy can only
// be an overload or an attack: active mode ends for the session, and a
// 227 still pairs with its PASV.
func TestInlineLossEndsActiveMode(t *testing.T) {
	h, c := session(t, Config{Inline: true})
	c.send(true, "NOOP\r\n") // the copy is lost
	h.feed(c.send(false, "200 NOOP ok.\r\n"))
	h.feed(c.send(true, "PORT 192,0,2,10,13,61\r\n"), c.send(false, "200 PORT command successful.\r\n"))
	if len(h.open()) != 0 {
		t.Fatalf("active mode after a lost copy: %v", h.open())
	}
	h.feed(c.send(true, "PASV\r\n"), c.send(false, "227 Entering Passive Mode (198,51,100,20,8,174)\r\n"))
	if !h.open()[pin("192.0.2.10", "198.51.100.20", 8*256+174)] {
		t.Errorf("passive mode after a lost copy: %v", h.open())
	}
}

// The server's reply reaches ftpgate before the command it answers (two
// capture sockets, a reordering mirror): it waits for the command.
func TestReplyBeforeItsCommand(t *testing.T) {
	h, c := session(t, Config{})
	cmd := c.send(true, "PASV\r\n")
	reply := c.send(false, "227 Entering Passive Mode (198,51,100,20,8,174)\r\n")
	h.feed(reply, cmd)
	if !h.open()[pin("192.0.2.10", "198.51.100.20", 8*256+174)] {
		t.Fatalf("reordered copies not paired: %v; channels %+v", h.open(), h.channels)
	}
}

// Hostile input that makes ftpgate log cannot grow the log without bound.
func TestLogLinesRateLimited(t *testing.T) {
	var logs bytes.Buffer
	h := newHarness(t, Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	c := newConn(t, cli, srv)
	h.feed(c.greeted()...)
	for range 100 {
		h.feed(c.send(true, strings.Repeat("PORT x\r\n", 128)))
	}
	if n := strings.Count(logs.String(), "malformed command"); n > logBurst {
		t.Errorf("%d log lines for 12,800 malformed commands, want at most %d", n, logBurst)
	}
	h.feed(c.packet(true, c.cseq, "RA", nil))
	if !strings.Contains(logs.String(), "log_lines_suppressed=") {
		t.Errorf("the session's end does not say how many lines were held back:\n%s", logs.String())
	}
	if st := h.tr.Stats(); st.Malformed != 12800 || st.LogSuppressed == 0 {
		t.Errorf("Malformed %d, LogSuppressed %d", st.Malformed, st.LogSuppressed)
	}
}
