package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/ftpgate/ftpgate/internal/browsertest"
)

// analyzeHTML writes the report of captures and returns its path and
// analyze's JSON records.
func analyzeHTML(t *testing.T, captures ...string) (string, []map[string]any) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "report.html")
	var stdout, stderr bytes.Buffer
	if code := run(append([]string{"analyze", "--html", out}, captures...), &stdout, &stderr); code != 0 {
		t.Fatalf("analyze --html: exit %d: %s", code, stderr.String())
	}
	var recs []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("analyze output %q: %v", l, err)
		}
		recs = append(recs, m)
	}
	return out, recs
}

// externalRef finds what would make a browser fetch something: an
// attribute naming a resource, a CSS url() that is not a fragment, an
// import, or an address.
var externalRef = regexp.MustCompile(`(?i)\b(src|href|xlink:href|action|srcset|poster|data)\s*=|url\(\s*['"]?[^#'")\s]|@import|https?:|//[a-z0-9.-]+\.[a-z]{2,}/|<(link|iframe|img|object|embed|base)\b`)

// TestReportSelfContained: the HTML references nothing outside itself,
// and the check finds the references it is there to find.
func TestReportSelfContained(t *testing.T) {
	file, _ := analyzeHTML(t, filepath.Join("testdata", "lab-v4-pasv-port-client-side.pcap"), filepath.Join("testdata", "lab-v6-eprt-epsv.pcap"))
	page, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if m := externalRef.FindAll(page, -1); len(m) > 0 {
		t.Errorf("the report references something outside itself: %q", m)
	}
	for _, bad := range []string{`<img src="x.png">`, `<script src="a.js"></script>`, `<link rel=stylesheet href=x.css>`,
		`background:url(x.png)`, `@import "x.css"`, `<a href="#top">`, `font: url( 'f.woff')`, `see https://example.com`} {
		if !externalRef.MatchString(bad) {
			t.Errorf("the check misses %s", bad)
		}
	}
	if !strings.Contains(string(page), "url(#arrow)") || externalRef.MatchString("marker-end=\"url(#arrow)\"") {
		t.Error("fragment references (markers) must pass the check and be used")
	}
}

// TestReportInBrowser loads the reports of the project's captures in
// Chromium and reads the page: a session per control session, a channel
// per announcement, the data arrows in the direction the data went, a
// refusal with its reason, no errors, nothing fetched.
func TestReportInBrowser(t *testing.T) {
	b := browsertest.New(t)
	captures, _ := filepath.Glob(filepath.Join("testdata", "*.pcap"))
	shared, _ := filepath.Glob(filepath.Join("..", "..", "..", "shared", "ftp-captures", "*.pcap*"))
	for _, c := range append(captures, shared...) {
		t.Run(filepath.Base(c), func(t *testing.T) {
			file, recs := analyzeHTML(t, c)
			b.Open(t, file)
			b.Clean(t, file)
			sessions, channels, refused, encrypted := map[string]bool{}, 0, 0, 0
			for _, r := range recs {
				sessions[r["session"].(string)] = true
				if r["record"] == "encrypted" {
					encrypted++
				}
				if r["record"] == nil {
					channels++
					if r["verdict"] == "refuse" {
						refused++
					}
				}
			}
			if got := b.Count(t, "details.session"); got < len(sessions) {
				t.Errorf("%d sessions drawn, want at least the %d with a record", got, len(sessions))
			}
			if got, _ := strconv.Atoi(b.Text(t, "#n-channels")); got != channels {
				t.Errorf("summary: %d channels, analyze reported %d", got, channels)
			}
			if got := b.Count(t, "g.decision"); got != channels {
				t.Errorf("%d decisions drawn, want %d", got, channels)
			}
			if got := b.Count(t, "g.decision.refused[data-reason]"); got != refused {
				t.Errorf("%d refusals drawn with a reason, want %d", got, refused)
			}
			if got := b.Count(t, "details.session[data-encrypted=true] rect.tls-band"); got != encrypted {
				t.Errorf("%d encrypted stretches drawn, want %d", got, encrypted)
			}
		})
	}
}

// TestReportManySessions: a generated capture of 1,000 sessions (passive
// with its data connection, active with its data connection, a refused
// bounce whose connection is dropped, a passive channel never used)
// renders, stays under 6 MiB, pages, and draws each as it happened.
func TestReportManySessions(t *testing.T) {
	const n = 1000
	capFile := filepath.Join(t.TempDir(), "many.pcap")
	writeManySessions(t, capFile, n)
	file, recs := analyzeHTML(t, capFile)
	if len(recs) != n {
		t.Fatalf("analyze reported %d channels, want %d", len(recs), n)
	}
	b := browsertest.New(t)
	took := b.Open(t, file)
	// How long Chromium takes depends on the machine and its load (it is
	// logged, and measured in docs/PERFORMANCE.md); what the page weighs
	// does not.
	size := fileSize(t, file)
	t.Logf("%d-session report: %d KiB, loaded in %v", n, size/1024, took.Round(time.Millisecond))
	if size > 6<<20 {
		t.Errorf("the %d-session report is %d KiB, want at most 6 MiB", n, size/1024)
	}
	b.Clean(t, file)
	for sel, want := range map[string]string{"#n-sessions": "1000", "#n-channels": "1000", "#n-passive": "500", "#n-active": "500",
		"#n-refused": "250", "#n-started": "500", "#n-dropped": "250", "#n-unused": "250"} {
		if got := b.Text(t, sel); got != want {
			t.Errorf("summary %s = %q, want %q", sel, got, want)
		}
	}
	if got := b.Count(t, "details.session"); got != n {
		t.Errorf("%d sessions on the page, want %d", got, n)
	}
	// Passive: the client connects to the server; active: the server
	// connects back to the client.
	if got := b.Count(t, "details.mode-passive g.data-conn.started[data-direction=client-to-server]"); got != 250 {
		t.Errorf("%d passive data connections drawn client to server, want 250", got)
	}
	if got := b.Count(t, "details.mode-passive g.data-conn[data-direction=server-to-client]"); got != 0 {
		t.Errorf("%d passive data connections drawn server to client", got)
	}
	if got := b.Count(t, "details.mode-active g.data-conn.started[data-direction=server-to-client]"); got != 250 {
		t.Errorf("%d active data connections drawn server to client, want 250", got)
	}
	if got := b.Count(t, "details.mode-active g.data-conn.dropped[data-direction=server-to-client]"); got != 250 {
		t.Errorf("%d dropped bounce connections drawn, want 250", got)
	}
	if got := browsertest.Eval[int](t, b, `[...document.querySelectorAll('g.data-conn.dropped')].filter(g => g.textContent.includes('2 SYNs')).length`); got != 250 {
		t.Errorf("%d dropped connections counted with their retransmission, want 250", got)
	}
	reason := browsertest.Eval[string](t, b, `document.querySelector('g.decision.refused').getAttribute('data-reason')`)
	if !strings.Contains(reason, "announced address 203.0.113.5") && !strings.Contains(reason, "203.0.113.5") {
		t.Errorf("refusal reason %q does not say what was announced", reason)
	}
	// Passwords are not in the page.
	if bytes.Contains(mustRead(t, file), []byte("s3cret")) {
		t.Error("the report shows a password")
	}
	// One page of 50 is shown at a time; next shows the second.
	const visibleSessions = `[...document.querySelectorAll('details.session')].filter(e => e.offsetParent !== null).length`
	visible := browsertest.Eval[int](t, b, visibleSessions)
	if visible != 50 {
		t.Errorf("%d sessions visible on the first page, want 50", visible)
	}
	if err := chromedp.Do(b.Ctx, chromedp.Click(chromedp.CSS("#next"))); err != nil {
		t.Fatal(err)
	}
	if got := b.Text(t, "#pageno"); got != "page 2 of 20" {
		t.Errorf("after next: %q", got)
	}
	first := browsertest.Eval[string](t, b, `[...document.querySelectorAll('details.session')].find(e => e.offsetParent !== null).dataset.session`)
	if first == "" || first == recs[0]["session"] {
		t.Errorf("page 2 starts with %q", first)
	}
	// The filter shows the active sessions of every page.
	if err := chromedp.Do(b.Ctx, chromedp.SetValue(chromedp.CSS("#filter"), "active")); err != nil {
		t.Fatal(err)
	}
	browsertest.Eval[bool](t, b, `document.getElementById('filter').dispatchEvent(new Event('change'))`)
	visible = browsertest.Eval[int](t, b, visibleSessions)
	if visible != 500 {
		t.Errorf("%d sessions shown by the active filter, want 500", visible)
	}
	b.Clean(t, file)
}

func fileSize(t *testing.T, f string) int64 {
	st, err := os.Stat(f)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

func mustRead(t *testing.T, f string) []byte {
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// writeManySessions writes n control sessions, one after another, in
// four kinds by i%4: passive (PASV) whose client connects; active (PORT)
// whose server connects back from port 20; a bounce (PORT to another
// host) the server accepts, refused by ftpgate, whose connection is
// attempted twice; passive (EPSV) never used.
func writeManySessions(t *testing.T, path string, n int) {
	w, out := createCapture(t, path)
	defer out.Close()
	ts := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	syn := func(from, to netip.AddrPort) {
		d := &flow{t: t, w: w, client: from, server: to, ts: ts}
		d.write(true, 7000, 0, "S", "")
		ts = d.ts
	}
	for i := range n {
		client := netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i%200)}), uint16(30000+i))
		server := netip.MustParseAddrPort("198.51.100.20:21")
		f := &flow{t: t, w: w, client: client, server: server, cseq: 1000, sseq: 900000, ts: ts}
		f.handshake()
		f.send(false, "220 (vsFTPd 3.0.3)\r\n", false)
		f.exchange("USER anonymous", "331 Please specify the password.")
		f.exchange("PASS s3cret", "230 Login successful.")
		port := uint16(40000 + i%20000)
		c4 := client.Addr().As4()
		switch i % 4 {
		case 0:
			f.exchange("PASV", fmt.Sprintf("227 Entering Passive Mode (198,51,100,20,%d,%d).", port>>8, port&0xff))
			ts = f.ts
			syn(netip.AddrPortFrom(client.Addr(), 50000), netip.AddrPortFrom(server.Addr(), port))
			f.ts = ts
		case 1:
			f.exchange(fmt.Sprintf("PORT %d,%d,%d,%d,%d,%d", c4[0], c4[1], c4[2], c4[3], port>>8, port&0xff), "200 PORT command successful. Consider using PASV.")
			f.send(true, "RETR file.bin\r\n", false)
			ts = f.ts
			syn(netip.AddrPortFrom(server.Addr(), 20), netip.AddrPortFrom(client.Addr(), port))
			f.ts = ts
		case 2:
			f.exchange(fmt.Sprintf("PORT 203,0,113,5,%d,%d", port>>8, port&0xff), "200 PORT command successful. Consider using PASV.")
			f.send(true, "RETR file.bin\r\n", false)
			ts = f.ts
			syn(netip.AddrPortFrom(server.Addr(), 20), netip.MustParseAddrPort(fmt.Sprintf("203.0.113.5:%d", port)))
			syn(netip.AddrPortFrom(server.Addr(), 20), netip.MustParseAddrPort(fmt.Sprintf("203.0.113.5:%d", port)))
			f.ts = ts
		case 3:
			f.exchange("EPSV", fmt.Sprintf("229 Entering Extended Passive Mode (|||%d|)", port))
		}
		f.exchange("QUIT", "221 Goodbye.")
		f.close()
		ts = f.ts.Add(10 * time.Millisecond)
	}
}
