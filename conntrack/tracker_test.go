package conntrack

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/ftpgate/ftpgate/parser"
)

const (
	cli = "192.0.2.10:40000"
	srv = "198.51.100.20:21"
)

func TestPassiveOpensPinhole(t *testing.T) {
	h := newHarness(t, Config{})
	c := newConn(t, cli, srv)
	h.feed(c.handshake()...)
	h.feed(c.send(false, "220 hello\r\n"), c.send(true, "PASV\r\n"))
	if len(h.open()) != 0 {
		t.Fatalf("pinhole open before the reply: %v", h.open())
	}
	h.feed(c.send(false, "227 Entering Passive Mode (198,51,100,20,156,65).\r\n"))
	want := pin("192.0.2.10", "198.51.100.20", 156*256+65)
	if !h.open()[want] {
		t.Fatalf("open = %v, want %v", h.open(), want)
	}
	if h.fw.Open[want] != 60*time.Second {
		t.Errorf("timeout = %v, want 60s", h.fw.Open[want])
	}
	if len(h.channels) != 1 || h.channels[0].Verdict != VerdictOpen || h.channels[0].Command != parser.VerbPASV || !h.channels[0].Passive {
		t.Errorf("channels = %+v", h.channels)
	}
	// The control session ends: the pinhole closes.
	h.feed(c.fin(true), c.fin(false), c.packet(true, c.cseq, "A", nil))
	if len(h.open()) != 0 {
		t.Errorf("pinholes left after the session ended: %v", h.open())
	}
	if st := h.tr.Stats(); st.SessionsTracked != 0 || st.SessionsEnded != 1 || st.GapBytes != 0 {
		t.Errorf("stats after end = %+v", st)
	}
}

func TestActiveModes(t *testing.T) {
	tests := []struct {
		name, client, server, cmd string
		want                      [3]string // peer, addr, port
		wantPort                  uint16
	}{
		{"PORT", cli, srv, "PORT 192,0,2,10,200,1", [3]string{"198.51.100.20", "192.0.2.10"}, 200*256 + 1},
		{"EPRT v4", cli, srv, "EPRT |1|192.0.2.10|40001|", [3]string{"198.51.100.20", "192.0.2.10"}, 40001},
		{"EPRT v6", "[2001:db8::10]:40000", "[2001:db8:1::20]:21", "EPRT |2|2001:db8::10|40001|", [3]string{"2001:db8:1::20", "2001:db8::10"}, 40001},
		{"LPRT", cli, srv, "LPRT 4,4,192,0,2,10,2,156,65", [3]string{"198.51.100.20", "192.0.2.10"}, 156*256 + 65},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Config{})
			c := newConn(t, tt.client, tt.server)
			h.feed(c.greeted()...)
			h.feed(c.send(true, tt.cmd+"\r\n"))
			if len(h.open()) != 0 {
				t.Fatalf("pinhole open before the server accepted: %v", h.open())
			}
			h.feed(c.send(false, "200 PORT command successful.\r\n"))
			want := pin(tt.want[0], tt.want[1], tt.wantPort)
			if !h.open()[want] {
				t.Fatalf("open = %v, want %v", h.open(), want)
			}
		})
	}
}

func TestEPSVv6(t *testing.T) {
	h := newHarness(t, Config{})
	c := newConn(t, "[2001:db8::10]:40000", "[2001:db8:1::20]:21")
	h.feed(c.greeted()...)
	h.feed(c.send(true, "EPSV\r\n"), c.send(false, "229 Entering Extended Passive Mode (|||50001|)\r\n"))
	if want := pin("2001:db8::10", "2001:db8:1::20", 50001); !h.open()[want] {
		t.Fatalf("open = %v, want %v", h.open(), want)
	}
}

// TestLinesWhereverTheyFall covers a command split over three segments,
// two commands in one segment, a multi-line 227 and bare LF endings.
func TestLinesWhereverTheyFall(t *testing.T) {
	h := newHarness(t, Config{})
	c := newConn(t, cli, srv)
	h.feed(c.greeted()...)
	h.feed(c.send(true, "PO"), c.send(true, "RT 192,0,2,10"), c.send(true, ",200,1\r\n"))
	h.feed(c.send(false, "200 ok\r\n"))
	if !h.open()[pin("198.51.100.20", "192.0.2.10", 200*256+1)] {
		t.Fatalf("split PORT not parsed: %v", h.open())
	}
	h.feed(c.send(true, "TYPE I\r\nPASV\n"))
	h.feed(c.send(false, "200 Switching to Binary mode.\r\n227-Entering Passive Mode\r\n 198,51,100,20,100,1\r\n227 ok\n"))
	if !h.open()[pin("192.0.2.10", "198.51.100.20", 100*256+1)] {
		t.Fatalf("pipelined PASV with multi-line 227 not paired: %v", h.open())
	}
	if n := len(h.open()); n != 1 {
		t.Errorf("%d pinholes open, want the PORT one superseded by PASV: %v", n, h.open())
	}
}

func TestOutOfOrderAndRetransmitted(t *testing.T) {
	h := newHarness(t, Config{})
	c := newConn(t, cli, srv)
	h.feed(c.greeted()...)
	a := c.send(true, "PASV\r\n")
	h.feed(a, a) // retransmitted with the same bytes, as a gateway also sees it twice
	p1 := c.send(false, "227 Entering Passive Mode ")
	p2 := c.send(false, "(198,51,100,20,100,2)\r\n")
	h.feed(p2)
	if len(h.open()) != 0 {
		t.Fatalf("opened from half a reply: %v", h.open())
	}
	h.feed(p1, p2, p1)
	want := pin("192.0.2.10", "198.51.100.20", 100*256+2)
	if len(h.open()) != 1 || !h.open()[want] {
		t.Fatalf("open = %v, want only %v", h.open(), want)
	}
	if len(h.channels) != 1 {
		t.Errorf("duplicates produced %d channels, want 1", len(h.channels))
	}
}

func TestSequenceWraparound(t *testing.T) {
	h := newHarness(t, Config{})
	c := newConn(t, cli, srv)
	c.cseq = 0xFFFFFFF0
	c.sseq = 0xFFFFFFFA
	h.feed(c.greeted()...)
	h.feed(c.send(true, "TYPE I\r\n"), c.send(true, "PASV\r\n")) // crosses 2^32
	h.feed(c.send(false, "200 ok\r\n"), c.send(false, "227 Entering Passive Mode (198,51,100,20,100,3)\r\n"))
	if !h.open()[pin("192.0.2.10", "198.51.100.20", 100*256+3)] {
		t.Fatalf("PASV across sequence wraparound not seen: %v", h.open())
	}
}

func TestMidStreamPickup(t *testing.T) {
	h := newHarness(t, Config{})
	c := newConn(t, cli, srv)
	c.cseq, c.sseq = 777, 888
	// No handshake: the daemon started while the session was running, in
	// the middle of a line.
	h.feed(c.send(true, "23,4,5\r\nPASV\r\n"))
	h.feed(c.send(false, "Passive Mode (198,51,100,20,1,1)\r\n227 Entering Passive Mode (198,51,100,20,100,4)\r\n"))
	if want := pin("192.0.2.10", "198.51.100.20", 100*256+4); len(h.open()) != 1 || !h.open()[want] {
		t.Fatalf("open = %v, want only %v", h.open(), want)
	}
}

func TestLineTooLongDropped(t *testing.T) {
	h := newHarness(t, Config{MaxLineLength: 64})
	c := newConn(t, cli, srv)
	h.feed(c.greeted()...)
	h.feed(c.send(true, "PASV\r\n"))
	h.feed(c.send(false, "227 "+strings.Repeat("A", 40)), c.send(false, strings.Repeat("A", 40)+"(198,51,100,20,100,5)\r\n"))
	if len(h.open()) != 0 {
		t.Fatalf("over-long line was parsed: %v", h.open())
	}
	if h.tr.Stats().LinesTooLong != 1 {
		t.Errorf("LinesTooLong = %d, want 1", h.tr.Stats().LinesTooLong)
	}
	// The next line is parsed normally.
	h.feed(c.send(true, "PASV\r\n"), c.send(false, "227 Entering Passive Mode (198,51,100,20,100,6)\r\n"))
	if !h.open()[pin("192.0.2.10", "198.51.100.20", 100*256+6)] {
		t.Fatalf("line after the dropped one not parsed: %v", h.open())
	}
}

// TestSnapshotFromAnotherGoroutine reads the counters while the tracker
// runs (go test -race checks that this is safe); each Tick publishes them.
func TestSnapshotFromAnotherGoroutine(t *testing.T) {
	h, c := session(t, Config{Logger: slog.New(slog.DiscardHandler)})
	stop := make(chan struct{})
	done := make(chan uint64)
	go func() {
		var last uint64
		for {
			select {
			case <-stop:
				done <- last
				return
			default:
				last = h.tr.Snapshot().ChannelsOpened
			}
		}
	}()
	for i := range 50 {
		h.feed(c.send(true, "PASV\r\n"), c.send(false, fmt.Sprintf("227 Entering Passive Mode (198,51,100,20,100,%d)\r\n", i+1)))
		h.tr.Tick(h.ts)
	}
	close(stop)
	<-done
	if got, want := h.tr.Snapshot().ChannelsOpened, h.tr.Stats().ChannelsOpened; got != want || want != 50 {
		t.Errorf("snapshot says %d channels opened, the tracker %d; want 50", got, want)
	}
}
