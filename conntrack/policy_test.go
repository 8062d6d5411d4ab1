package conntrack

import (
	"strings"
	"testing"
	"time"
)

// session is a harness with one established control connection.
func session(t *testing.T, cfg Config) (*harness, *conn) {
	h := newHarness(t, cfg)
	c := newConn(t, cli, srv)
	h.feed(c.handshake()...)
	h.feed(c.send(false, "220 ready\r\n"))
	return h, c
}

func (h *harness) lastChannel() Channel {
	h.t.Helper()
	if len(h.channels) == 0 {
		h.t.Fatalf("no channel recorded")
	}
	return h.channels[len(h.channels)-1]
}

func TestRefusals(t *testing.T) {
	tests := []struct {
		name   string
		lines  [][2]string // {from "c" or "s", text}
		reason string
		kind   RefusalKind
	}{
		{"bounce: PORT to a third host", [][2]string{{"c", "PORT 203,0,113,5,200,1"}, {"s", "200 ok"}},
			"announced address 203.0.113.5 is not the client's control address 192.0.2.10", refusedNotAnnouncer},
		{"bounce: PORT to the client's neighbour", [][2]string{{"c", "PORT 192,0,2,11,31,144"}, {"s", "200 ok"}},
			"announced address 192.0.2.11 is not the client's control address 192.0.2.10: it names another host on the same network (an FTP bounce)", refusedNotAnnouncer},
		{"bounce: PORT to the server itself", [][2]string{{"c", "PORT 198,51,100,20,0,25"}, {"s", "200 ok"}},
			"announced address 198.51.100.20 is not the client's control address", refusedNotAnnouncer},
		{"EPRT for another family", [][2]string{{"c", "EPRT |2|2001:db8::10|40000|"}, {"s", "200 ok"}},
			"is not the client's control address", refusedNotAnnouncer},
		{"PORT to a privileged port", [][2]string{{"c", "PORT 192,0,2,10,0,80"}, {"s", "200 ok"}},
			"announced port 80 is below the minimum data port 1024", refusedLowPort},
		{"PORT the server refused", [][2]string{{"c", "PORT 192,0,2,10,200,1"}, {"s", "500 Illegal PORT command."}},
			"server refused PORT with 500", refusedByServer},
		{"227 to a third host", [][2]string{{"c", "PASV"}, {"s", "227 Entering Passive Mode (203,0,113,5,200,1)"}},
			"announced address 203.0.113.5 is not the server's control address 198.51.100.20", refusedNotAnnouncer},
		{"227 without PASV", [][2]string{{"s", "227 Entering Passive Mode (198,51,100,20,200,1)"}},
			"227 reply without a PASV from the client", refusedUnsolicited},
		{"227 answering something else", [][2]string{{"c", "NOOP"}, {"s", "227 Entering Passive Mode (198,51,100,20,200,1)"}},
			"227 reply answers a command that asks for no data connection, not a PASV", refusedUnsolicited},
		{"229 to EPSV ALL", [][2]string{{"c", "EPSV ALL"}, {"s", "229 Entering Extended Passive Mode (|||50000|)"}},
			"229 reply answers EPSV ALL, not an EPSV", refusedUnsolicited},
		{"227 to a low port", [][2]string{{"c", "PASV"}, {"s", "227 Entering Passive Mode (198,51,100,20,0,22)"}},
			"announced port 22 is below the minimum data port 1024", refusedLowPort},
		{"227 to an empty line", [][2]string{{"c", ""}, {"s", "227 Entering Passive Mode (198,51,100,20,200,1)"}},
			"227 reply answers an empty line, not a PASV", refusedUnsolicited},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, c := session(t, Config{MinDataPort: 1024})
			for _, l := range tt.lines {
				h.feed(c.send(l[0] == "c", l[1]+"\r\n"))
			}
			if len(h.open()) != 0 {
				t.Errorf("pinholes opened: %v", h.open())
			}
			ch := h.lastChannel()
			if ch.Verdict != VerdictRefuse || !strings.Contains(ch.Reason, tt.reason) {
				t.Errorf("verdict %v %q, want refuse %q", ch.Verdict, ch.Reason, tt.reason)
			}
			// Counted by the kind the refusal was made with, not by
			// what its text says.
			if ch.Refusal != tt.kind || h.tr.env.stats.RefusedBy[tt.kind] != 1 {
				t.Errorf("refused as %v (counted %v), want %v", ch.Refusal, h.tr.env.stats.RefusedBy, tt.kind)
			}
		})
	}
}

func TestUnansweredPortReportedAtEnd(t *testing.T) {
	h, c := session(t, Config{})
	h.feed(c.send(true, "PORT 192,0,2,10,200,1\r\n"))
	if len(h.channels) != 0 {
		t.Fatalf("channel decided before any reply: %+v", h.channels)
	}
	h.feed(c.packet(true, c.cseq, "RA", nil))
	ch := h.lastChannel()
	if ch.Verdict != VerdictRefuse || !strings.Contains(ch.Reason, "no reply from the server") {
		t.Errorf("got %v %q, want refuse for lack of reply", ch.Verdict, ch.Reason)
	}
}

func TestPipelinedPairing(t *testing.T) {
	h, c := session(t, Config{})
	// Three commands at once; the replies come in order. The PORT is
	// refused, the PASV's 227 must pair with the PASV, not the PORT.
	h.feed(c.send(true, "TYPE I\r\nPORT 192,0,2,10,200,1\r\nPASV\r\n"))
	h.feed(c.send(false, "200 Type set\r\n500 no PORT for you\r\n227 Entering Passive Mode (198,51,100,20,200,9)\r\n"))
	if len(h.channels) != 2 || h.channels[0].Verdict != VerdictRefuse || h.channels[1].Verdict != VerdictOpen {
		t.Fatalf("channels = %+v", h.channels)
	}
	if !h.open()[pin("192.0.2.10", "198.51.100.20", 200*256+9)] {
		t.Errorf("PASV pinhole missing: %v", h.open())
	}
}

func TestPreliminaryReplyDoesNotPair(t *testing.T) {
	h, c := session(t, Config{})
	h.feed(c.send(true, "PORT 192,0,2,10,200,1\r\n"))
	h.feed(c.send(false, "150 wait\r\n"))
	if len(h.open()) != 0 {
		t.Fatalf("1xx reply accepted a PORT")
	}
	h.feed(c.send(false, "200 ok\r\n"))
	if len(h.open()) != 1 {
		t.Fatalf("PORT not opened after 200: %v", h.open())
	}
}

func TestAuthTLSStopsParsingUntilCCC(t *testing.T) {
	h, c := session(t, Config{})
	h.feed(c.send(true, "AUTH TLS\r\n"), c.send(false, "234 Proceed with negotiation.\r\n"))
	// TLS records (handshake 0x16, application data 0x17) whose payload
	// happens to look like FTP must not be parsed.
	rec := func(typ byte, body string) string {
		return string([]byte{typ, 3, 3, byte(len(body) >> 8), byte(len(body))}) + body
	}
	h.feed(c.send(true, rec(0x16, "\x01hello\r\nPASV\r\n")), c.send(false, rec(0x16, "\x02227 Entering Passive Mode (198,51,100,20,200,1)\r\n")))
	h.feed(c.send(true, rec(0x17, "PASV\r\n")+rec(0x17, "x")), c.send(false, rec(0x17, "227 Entering Passive Mode (198,51,100,20,200,2)\r\n")))
	if len(h.channels) != 0 || len(h.open()) != 0 {
		t.Fatalf("encrypted session parsed: %+v", h.channels)
	}
	// After CCC (inside TLS) the server closes TLS, then the client, and
	// both speak clear text again.
	h.feed(c.send(false, rec(0x15, "close")), c.send(true, rec(0x15, "close")+"PASV\r\n"))
	h.feed(c.send(false, "227 Entering Passive Mode (198,51,100,20,200,3)\r\n"))
	if !h.open()[pin("192.0.2.10", "198.51.100.20", 200*256+3)] {
		t.Fatalf("clear text after CCC not parsed: %v", h.open())
	}
}

func TestQuitAndResetClosePinholes(t *testing.T) {
	t.Run("QUIT", func(t *testing.T) {
		h, c := session(t, Config{})
		h.feed(c.send(true, "PASV\r\n"), c.send(false, "227 Entering Passive Mode (198,51,100,20,200,1)\r\n"))
		h.feed(c.send(true, "QUIT\r\n"), c.send(false, "221 Goodbye.\r\n"))
		if len(h.open()) != 0 {
			t.Errorf("pinhole open after QUIT: %v", h.open())
		}
	})
	t.Run("RST", func(t *testing.T) {
		h, c := session(t, Config{})
		h.feed(c.send(true, "PASV\r\n"), c.send(false, "227 Entering Passive Mode (198,51,100,20,200,1)\r\n"))
		h.feed(c.packet(false, c.sseq, "RA", nil))
		if len(h.open()) != 0 {
			t.Errorf("pinhole open after RST: %v", h.open())
		}
		if h.tr.Stats().SessionsTracked != 0 {
			t.Errorf("session still tracked after RST")
		}
	})
}

func TestTimeoutsExpire(t *testing.T) {
	h, c := session(t, Config{PinholeTimeout: 5 * time.Second, IdleTimeout: time.Minute})
	h.feed(c.send(true, "PASV\r\n"), c.send(false, "227 Entering Passive Mode (198,51,100,20,200,1)\r\n"))
	h.tr.Expire(h.ts.Add(4 * time.Second))
	h.tr.Commit()
	if len(h.open()) != 1 {
		t.Fatalf("pinhole gone before its timeout")
	}
	h.tr.Expire(h.ts.Add(6 * time.Second))
	h.tr.Commit()
	if len(h.open()) != 0 || h.tr.Stats().PinholesOpen != 0 {
		t.Fatalf("pinhole still tracked after its timeout")
	}
	// The idle session is forgotten after IdleTimeout.
	h.tr.Expire(h.ts.Add(2 * time.Minute))
	if n := h.tr.Stats().SessionsTracked; n != 0 {
		t.Errorf("%d sessions tracked after the idle timeout, want 0", n)
	}
}

func TestCaps(t *testing.T) {
	t.Run("sessions", func(t *testing.T) {
		h := newHarness(t, Config{MaxSessions: 2})
		for i, port := range []string{"40001", "40002", "40003"} {
			c := newConn(t, "192.0.2.10:"+port, srv)
			h.feed(c.greeted()...)
			h.feed(c.send(true, "PASV\r\n"), c.send(false, "227 Entering Passive Mode (198,51,100,20,200,"+string(rune('1'+i))+")\r\n"))
		}
		st := h.tr.Stats()
		if st.SessionsTracked != 2 || st.SessionsRefused == 0 || len(h.open()) != 2 {
			t.Errorf("tracked %d, refused %d, open %d; want 2, >0, 2", st.SessionsTracked, st.SessionsRefused, len(h.open()))
		}
	})
	t.Run("per session", func(t *testing.T) {
		h, c := session(t, Config{MaxPinholesPerSession: 2})
		h.feed(c.send(true, "PASV\r\nPASV\r\nPASV\r\n"))
		h.feed(c.send(false, "227 (198,51,100,20,200,1)\r\n227 (198,51,100,20,200,2)\r\n227 (198,51,100,20,200,3)\r\n"))
		if len(h.open()) != 2 {
			t.Errorf("open = %v, want 2", h.open())
		}
		if ch := h.lastChannel(); ch.Verdict != VerdictRefuse || !strings.Contains(ch.Reason, "session has reached its pinhole cap") {
			t.Errorf("last channel %v %q", ch.Verdict, ch.Reason)
		}
	})
	t.Run("in all", func(t *testing.T) {
		h := newHarness(t, Config{MaxPinholes: 1})
		for _, port := range []string{"40001", "40002"} {
			c := newConn(t, "192.0.2.10:"+port, srv)
			h.feed(c.greeted()...)
			h.feed(c.send(true, "PASV\r\n"), c.send(false, "227 (198,51,100,20,200,"+port[4:]+")\r\n"))
		}
		if len(h.open()) != 1 {
			t.Errorf("open = %v, want 1", h.open())
		}
		if ch := h.lastChannel(); !strings.Contains(ch.Reason, "pinhole cap reached for the whole gateway") {
			t.Errorf("last channel %v %q", ch.Verdict, ch.Reason)
		}
	})
}

func TestConsumedReportLogsRealReason(t *testing.T) {
	h, c := session(t, Config{ReportWindow: 2 * time.Second})
	h.feed(c.send(true, "PASV\r\n"), c.send(false, "227 Entering Passive Mode (198,51,100,20,200,1)\r\n"))
	p := pin("192.0.2.10", "198.51.100.20", 200*256+1)
	// The session quits before the kernel's report arrives.
	h.feed(c.send(true, "QUIT\r\n"), c.send(false, "221 bye\r\n"))
	if len(h.open()) != 0 {
		t.Fatalf("pinhole not removed at QUIT")
	}
	before := h.tr.Stats().PinholesConsumed
	h.tr.PinholeConsumed(p)
	if h.tr.Stats().PinholesConsumed != before+1 {
		t.Errorf("late report not attributed to the closed pinhole")
	}
}

// TestReusedTupleAfterReset resets a session and starts a new one on the
// same 4-tuple at once: the new session must be tracked, and stray
// segments of the reset one must not start a session of their own.
func TestReusedTupleAfterReset(t *testing.T) {
	h := newHarness(t, Config{})
	c := newConn(t, cli, srv)
	h.feed(c.handshake()...)
	h.feed(c.send(false, "220 hi\r\n"), c.send(true, "PASV\r\n"), c.send(false, "227 (198,51,100,20,200,1)\r\n"))
	h.feed(c.packet(true, c.cseq, "RA", nil))
	if len(h.open()) != 0 {
		t.Fatalf("pinhole open after RST")
	}
	h.feed(c.send(false, "200 late\r\n")) // in flight when the reset came
	if n := h.tr.Stats().SessionsTracked; n != 0 {
		t.Fatalf("a stray segment of the reset connection started %d sessions", n)
	}
	c2 := newConn(t, cli, srv)
	c2.cseq, c2.sseq = 900000, 700000
	h.feed(c2.handshake()...)
	h.feed(c2.send(false, "220 hi\r\n"), c2.send(true, "PASV\r\n"), c2.send(false, "227 (198,51,100,20,200,2)\r\n"))
	if !h.open()[pin("192.0.2.10", "198.51.100.20", 200*256+2)] {
		t.Fatalf("new session on a reset tuple not tracked: %v", h.open())
	}
}

// TestPairingRecoversAfterGap loses a server segment holding a reply: the
// session must not stay one reply off for the rest of its life.
func TestPairingRecoversAfterGap(t *testing.T) {
	h, c := session(t, Config{})
	h.feed(c.send(true, "TYPE I\r\n"))
	c.send(false, "200 Switching to Binary mode.\r\n") // lost on the way to ftpgate
	h.feed(c.send(true, "PASV\r\n"), c.send(false, "227 Entering Passive Mode (198,51,100,20,200,1)\r\n"))
	h.tr.Expire(h.ts.Add(10 * time.Second)) // reassembly gives up waiting for the lost bytes
	h.feed(c.send(true, "PASV\r\n"), c.send(false, "227 Entering Passive Mode (198,51,100,20,200,2)\r\n"))
	if !h.open()[pin("192.0.2.10", "198.51.100.20", 200*256+2)] {
		t.Fatalf("pairing did not recover after the gap: %v; channels %+v", h.open(), h.channels)
	}
}
