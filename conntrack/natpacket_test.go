package conntrack

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/ftpgate/ftpgate/nat"
	"github.com/ftpgate/ftpgate/parser"
)

// translated is a harness session of the NAT packet path: bytes come a
// segment at a time, with TCP sequence numbers.
type translated struct {
	*harness
	id  uint64
	seq [2]uint32 // next sequence number per side
}

func newTranslated(t *testing.T, tr nat.Translation) *translated {
	h := newHarness(t, Config{Inline: true})
	p := &translated{harness: h, id: 9, seq: [2]uint32{1000, 5000}}
	h.tr.OpenTranslated(p.id, tr, false, h.ts)
	p.segment(true, "220 hello\r\n")
	return p
}

// segment passes one segment's bytes and returns what goes on, after
// committing as the daemon does before its verdict.
func (p *translated) segment(fromServer bool, chunk string) string {
	p.t.Helper()
	d, o := 0, 1
	if fromServer {
		d, o = 1, 0
	}
	out, closed := p.tr.TranslatedBytes(p.id, fromServer, p.seq[d], []byte(chunk), p.seq[o], p.ts)
	if closed {
		p.t.Fatalf("session closed on %q", chunk)
	}
	p.seq[d] += uint32(len(chunk))
	if err := p.tr.Commit(); err != nil {
		p.t.Fatal(err)
	}
	return string(out)
}

// TestPacketPathRewritesInSegment: the masqueraded client's PORT, whole
// in one segment with the line after it, is rewritten in place; the
// rest of the segment goes on as it came; the mapping waits for the 200.
func TestPacketPathRewritesInSegment(t *testing.T) {
	p := newTranslated(t, masqueraded)
	out := p.segment(false, "PORT 192,0,2,2,156,64\r\nNOOP\r\n")
	line, rest, ok := strings.Cut(out, "\r\n")
	if !ok || rest != "NOOP\r\n" {
		t.Fatalf("segment went on as %q", out)
	}
	cmd, err := parser.ParseCommand([]byte(line))
	if err != nil || cmd.Endpoint.Addr() != netip.MustParseAddr("203.0.113.1") {
		t.Fatalf("rewritten %q: %v", line, err)
	}
	if len(p.fw.Maps) != 0 {
		t.Fatalf("mapped before the server accepted it: %v", p.fw.Maps)
	}
	if got := p.segment(true, "200 PORT command successful\r\n200 NOOP ok\r\n"); got != "200 PORT command successful\r\n200 NOOP ok\r\n" {
		t.Errorf("replies changed: %q", got)
	}
	if len(p.fw.Maps) != 1 {
		t.Errorf("after the 200: maps %v", p.fw.Maps)
	}
	if st := p.tr.Stats(); st.SessionsTranslated != 1 || st.SessionsProxied != 0 {
		t.Errorf("stats: translated %d proxied %d", st.SessionsTranslated, st.SessionsProxied)
	}
}

// TestPacketPathSplitAnnouncementRefused: a 227 whose line began in an
// earlier segment has gone on in part; it cannot be rewritten, so it is
// refused, and nothing is mapped for it. Every byte goes on as it came.
func TestPacketPathSplitAnnouncementRefused(t *testing.T) {
	p := newTranslated(t, forwarded)
	p.segment(false, "PASV\r\n")
	if got := p.segment(true, "227 Entering Passive Mode (198,51,"); got != "227 Entering Passive Mode (198,51," {
		t.Fatalf("first part went on as %q", got)
	}
	if got := p.segment(true, "100,2,195,80).\r\n"); got != "100,2,195,80).\r\n" {
		t.Fatalf("second part went on as %q", got)
	}
	if len(p.fw.Maps) != 0 || len(p.fw.Open) != 0 {
		t.Fatalf("split announcement opened: maps %v pinholes %v", p.fw.Maps, p.fw.Open)
	}
	// The next, whole, is rewritten.
	p.segment(false, "PASV\r\n")
	got := p.segment(true, "227 Entering Passive Mode (198,51,100,2,195,81).\r\n")
	if !strings.Contains(got, "203,0,113,1") || len(p.fw.Maps) != 1 {
		t.Fatalf("whole 227 went on as %q, maps %v", got, p.fw.Maps)
	}
}

// TestPacketPathMultiLineNotHeld: the lines of a multi-line 227 go on
// in their own segments (nothing is held back in the packet path); its
// last line, whole in a segment, is rewritten.
func TestPacketPathMultiLineNotHeld(t *testing.T) {
	p := newTranslated(t, forwarded)
	p.segment(false, "PASV\r\n")
	if got := p.segment(true, "227-Entering Passive Mode\r\n"); got != "227-Entering Passive Mode\r\n" {
		t.Fatalf("first line went on as %q", got)
	}
	got := p.segment(true, "227 (198,51,100,2,195,80)\r\n")
	if !strings.Contains(got, "203,0,113,1") || !strings.HasPrefix(got, "227 ") {
		t.Fatalf("last line went on as %q", got)
	}
}

// TestPacketPathPickedUpBackInStep: a session picked up after a restart
// refuses active mode until a quiet point (every byte acknowledged both
// ways, the server's reply final), which the packet path's segments
// show: after TYPE I and its 200, a PORT is rewritten again.
func TestPacketPathPickedUpBackInStep(t *testing.T) {
	h := newHarness(t, Config{Inline: true})
	p := &translated{harness: h, id: 11, seq: [2]uint32{1000, 5000}}
	h.tr.OpenTranslated(p.id, masqueraded, true, h.ts)
	if out := p.segment(false, "PORT 192,0,2,2,156,64\r\n"); strings.Contains(out, "203,0,113,1") {
		t.Fatalf("active mode right after the pickup: %q", out)
	}
	p.segment(true, "500 Illegal PORT command.\r\n")
	p.segment(false, "TYPE I\r\n")
	p.segment(true, "200 Switching to Binary mode.\r\n")
	out := p.segment(false, "PORT 192,0,2,2,156,65\r\n")
	if !strings.Contains(out, "203,0,113,1") {
		t.Fatalf("after a quiet point the PORT went on as %q", out)
	}
}
