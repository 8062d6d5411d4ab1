package report

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/ftpgate/ftpgate/conntrack"
	"github.com/ftpgate/ftpgate/parser"
)

var (
	client = netip.MustParseAddrPort("192.0.2.10:40000")
	server = netip.MustParseAddrPort("198.51.100.20:21")
	t0     = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
)

func line(r *Report, id string, ms int, fromServer bool, text string) {
	r.Line(conntrack.ControlLine{Time: t0.Add(time.Duration(ms) * time.Millisecond), Session: id, Client: client, Server: server,
		FromServer: fromServer, Text: []byte(text)})
}

func page(t *testing.T, r *Report) string {
	t.Helper()
	var b bytes.Buffer
	if err := r.WriteHTML(&b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// What a peer writes on the control channel reaches the page as text,
// never as markup.
func TestHostileTextEscaped(t *testing.T) {
	r := New(Options{Title: "<b>t</b>"})
	line(r, "C1", 0, false, `USER <script>alert(1)</script>`)
	line(r, "C1", 1, true, `530 "><svg onload=alert(1)>`)
	line(r, "C1", 2, false, "NOOP \x00\x1b[2J\xff")
	r.Channel(conntrack.Channel{Time: t0, Session: "C1\"><x", Command: parser.VerbPORT, OrigH: server.Addr(),
		RespH: netip.MustParseAddr("203.0.113.5"), RespP: 4000, Verdict: conntrack.VerdictRefuse, Reason: `<i>x</i>"'`, Client: client, Server: server})
	p := page(t, r)
	for _, bad := range []string{"<script>alert", "<svg onload", "<i>x</i>", `C1"><x`, "<b>t</b>", "\x00", "\x1b"} {
		if strings.Contains(p, bad) {
			t.Errorf("the page holds %q unescaped", bad)
		}
	}
	if !strings.Contains(p, `NOOP \x00\x1b[2J`) {
		t.Error("control bytes are not shown as escapes")
	}
}

func TestPasswordsHidden(t *testing.T) {
	r := New(Options{})
	line(r, "C1", 0, false, "PASS hunter2")
	line(r, "C1", 1, false, "pass hunter3")
	line(r, "C1", 2, false, "ACCT secret-acct")
	p := page(t, r)
	for _, secret := range []string{"hunter2", "hunter3", "secret-acct"} {
		if strings.Contains(p, secret) {
			t.Errorf("the page shows %s", secret)
		}
	}
	if !strings.Contains(p, "PASS ********") || !strings.Contains(p, "pass ********") || !strings.Contains(p, "ACCT ********") {
		t.Error("the redacted commands are not shown")
	}
}

// An active-mode channel is decided at the server's 200, after the
// PORT: the decision is drawn after the reply, though announced before.
func TestDecisionDrawnWhenTaken(t *testing.T) {
	r := New(Options{})
	line(r, "C1", 0, false, "PORT 192,0,2,10,200,1")
	line(r, "C1", 5, true, "200 PORT command successful.")
	r.Channel(conntrack.Channel{Time: t0, Session: "C1", Command: parser.VerbPORT, OrigH: server.Addr(), RespH: client.Addr(), RespP: 51201,
		Verdict: conntrack.VerdictOpen, Client: client, Server: server})
	p := page(t, r)
	reply, decision := strings.Index(p, "200 PORT command successful."), strings.Index(p, `class="decision opened"`)
	if reply < 0 || decision < 0 || decision < reply {
		t.Errorf("the decision (at %d) is not drawn after the 200 (at %d)", decision, reply)
	}
	if !strings.Contains(p, "announces: the client listens on 192.0.2.10:51201") {
		t.Error("the PORT's announcement is not decoded")
	}
}

// Sessions and events are bounded; what is dropped is still counted.
func TestBounded(t *testing.T) {
	r := New(Options{MaxSessions: 10, MaxEvents: 5})
	for i := range 100 {
		id := fmt.Sprintf("C%d", i)
		for j := range 20 {
			line(r, id, j, j%2 == 1, "NOOP")
		}
		r.Channel(conntrack.Channel{Time: t0, Session: id, Command: parser.VerbPASV, Passive: true, OrigH: client.Addr(), RespH: server.Addr(),
			RespP: 40000, Verdict: conntrack.VerdictOpen, Client: client, Server: server})
		r.SessionEnd(conntrack.SessionEnd{Session: id, Client: client, Server: server, Start: t0, End: t0.Add(time.Second), Reason: "quit"})
	}
	if len(r.order) != 10 || len(r.sessions) != 10 {
		t.Errorf("%d sessions kept, want 10", len(r.order))
	}
	if len(r.byData) > 40 {
		t.Errorf("%d expected connections kept", len(r.byData))
	}
	for _, s := range r.order {
		if s.lines != 5 || s.more != 15 {
			t.Errorf("session %s: %d lines kept, %d counted, want 5 and 15", s.id, s.lines, s.more)
		}
	}
	p := page(t, r)
	if !strings.Contains(p, `<td id="n-sessions">100</td>`) || !strings.Contains(p, "The 90 oldest sessions are counted above but not drawn") {
		t.Error("the summary does not count the sessions no longer drawn")
	}
	if !strings.Contains(p, "15 later events of this session are not drawn") {
		t.Error("a session does not say what it left out")
	}
}

func FuzzReportLine(f *testing.F) {
	f.Add([]byte("227 Entering Passive Mode (198,51,100,20,156,65)."), true)
	f.Add([]byte("PORT 192,0,2,10,200,1"), false)
	f.Add([]byte("<script>"), false)
	f.Fuzz(func(t *testing.T, text []byte, fromServer bool) {
		// A '<' of the line, with what follows it, must not reach the
		// page as such: that would start markup. (Its escape, &lt;,
		// holds no '<'.)
		k := bytes.IndexByte(text, '<')
		if k < 0 {
			return
		}
		tag := string(text[k:min(len(text), k+2)])
		r, base := New(Options{}), New(Options{})
		line(r, "C1", 0, fromServer, string(text))
		line(base, "C1", 0, fromServer, "x")
		if got, want := strings.Count(page(t, r), tag), strings.Count(page(t, base), tag); got > want {
			t.Errorf("the line %q puts %q on the page", text, tag)
		}
	})
}

func TestTruncateKeepsCharacters(t *testing.T) {
	s := strings.Repeat("é", 50)
	for n := range 100 {
		if got := truncate(s, n); !utf8.ValidString(got) || len(got) > n+len("…") {
			t.Fatalf("truncate(%d) = %q", n, got)
		}
	}
	if a, b := splitLine(strings.Repeat("word ", 40), 110); b == "" || len(a) > 110 {
		t.Errorf("splitLine: %q / %q", a, b)
	}
}

// fill gives r n sessions of a typical transfer each, numbered from
// first.
func fill(r *Report, first, n int) {
	for i := first; i < first+n; i++ {
		id := fmt.Sprintf("C%d", i)
		for j, l := range []string{"220 (vsFTPd 3.0.3)", "USER anonymous", "230 Login successful.", "PASV",
			"227 Entering Passive Mode (198,51,100,20,156,65).", "RETR file.bin", "150 Opening BINARY mode data connection.", "226 Transfer complete.", "QUIT", "221 Goodbye."} {
			line(r, id, j, j%2 == 0, l)
		}
		ch := conntrack.Channel{Time: t0, Session: id, Command: parser.VerbPASV, Passive: true, OrigH: client.Addr(), RespH: server.Addr(),
			RespP: 40001, Verdict: conntrack.VerdictOpen, Client: client, Server: server}
		r.Channel(ch)
		r.ChannelClosed(conntrack.ChannelClosed{Channel: ch, At: t0.Add(5 * time.Millisecond), Reason: "data connection started", Started: true})
		r.SessionEnd(conntrack.SessionEnd{Session: id, Client: client, Server: server, Start: t0, End: t0.Add(time.Second), Reason: "control connection closed"})
	}
}

// BenchmarkWriteHTML: the daemon's page at its bound (500 sessions),
// written every 2 s while sessions come and go.
func BenchmarkWriteHTML(b *testing.B) {
	r := New(Options{MaxSessions: 500})
	fill(r, 0, 500)
	var buf bytes.Buffer
	b.ReportAllocs()
	for b.Loop() {
		buf.Reset()
		if err := r.WriteHTML(&buf); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(buf.Len())/1024, "KiB/page")
}

// BenchmarkSnapshot: how long a write holds the lock the tracker's hooks
// take, at the daemon's bound.
func BenchmarkSnapshot(b *testing.B) {
	r := New(Options{MaxSessions: 500})
	fill(r, 0, 500)
	b.ReportAllocs()
	for b.Loop() {
		r.mu.Lock()
		_ = r.snapshot()
		r.mu.Unlock()
	}
}

// BenchmarkObserveSession: what the report adds to the tracker's work
// per session (its hooks run on the tracker's goroutine).
func BenchmarkObserveSession(b *testing.B) {
	r := New(Options{MaxSessions: 500})
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		fill(r, i, 1)
		i++
	}
}

// The events of all sessions together are bounded: the oldest sessions
// go to make room, and are still counted.
func TestTotalEventsBounded(t *testing.T) {
	r := New(Options{MaxTotalEvents: 100})
	fill(r, 0, 50)
	total := 0
	for _, s := range r.order {
		total += len(s.events)
	}
	if total > 100 || total != r.events {
		t.Errorf("%d events kept (counted %d), want at most 100", total, r.events)
	}
	if r.sum.sessions != 50 || r.sum.evicted != 50-len(r.order) || len(r.order) < 5 {
		t.Errorf("%d sessions counted, %d kept, %d evicted", r.sum.sessions, len(r.order), r.sum.evicted)
	}
	// A single session beyond the budget keeps what fits.
	r = New(Options{MaxTotalEvents: 10, MaxEvents: 1000})
	for j := range 100 {
		line(r, "C1", j, false, "NOOP")
	}
	if len(r.order[0].events) != 10 || r.order[0].more != 90 {
		t.Errorf("one session: %d events kept, %d counted", len(r.order[0].events), r.order[0].more)
	}
}
