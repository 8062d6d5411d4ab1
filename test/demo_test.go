package test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/ftpgate/ftpgate/internal/browsertest"
)

// TestDemo runs make demo's script and reads it as a student would: each
// transfer named by its mode and who connects, failing without ftpgate
// and working with it; ftpgate (not the server, which said 200) refusing
// the bounce; the table; and the HTML report of the demo's own capture,
// which draws the refused bounce and its dropped connection.
func TestDemo(t *testing.T) {
	needLab(t)
	report := filepath.Join(t.TempDir(), "demo.html")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "./demo.sh")
	cmd.Env = append(os.Environ(), "FTPGATE="+bin, "DEMO_REPORT="+report)
	b, err := cmd.CombinedOutput()
	out := string(b)
	if err != nil {
		t.Fatalf("demo.sh: %v\n%s", err, out)
	}
	without, with, ok := strings.Cut(out, "3. With ftpgate")
	if !ok {
		t.Fatalf("no step 3 in the demo's output:\n%s", out)
	}
	with, rest, _ := strings.Cut(with, "4. What ftpgate")
	for _, mode := range []string{"passive mode (the client connects)", "active mode (the server connects back)"} {
		if n := regexp.MustCompile(regexp.QuoteMeta(mode)+`.*FAIL  \w`).FindAllString(without, -1); len(n) < 3 {
			t.Errorf("without ftpgate: %d failed transfers in %s explained, want 3:\n%s", len(n), mode, without)
		}
		if n := regexp.MustCompile(regexp.QuoteMeta(mode)+`.*ok    262144 bytes`).FindAllString(with, -1); len(n) < 3 {
			t.Errorf("with ftpgate: %d transfers in %s, want 3:\n%s", len(n), mode, with)
		}
	}
	if strings.Contains(without, "FAIL  curl exit") {
		t.Errorf("a curl exit status not explained in words:\n%s", without)
	}
	for _, want := range []string{
		"server: 200 PORT command successful", // the server would have done it
		"REFUSED  PORT  active  198.51.100.20 may NOT connect to 192.0.2.11:8080",
		"(an FTP bounce)",
		"ftpgate, not the server, refused",
		"OPENED   PASV  passive 192.0.2.10 may connect to 198.51.100.20:",
		"OPENED   PORT  active  198.51.100.20 may connect to 192.0.2.10:",
		"CONNECTS FROM", "passive (client connects)", "active (server connects)", "would open", "refused",
		"The report of this demo, a diagram per session (open it in a browser): " + report,
	} {
		if !strings.Contains(rest, want) {
			t.Errorf("the demo's output lacks %q:\n%s", want, rest)
		}
	}
	br := browsertest.New(t)
	br.Open(t, report)
	br.Clean(t, report)
	if got := br.Count(t, "g.decision.refused[data-reason*=bounce]"); got != 1 {
		t.Errorf("%d refused bounces drawn, want 1", got)
	}
	if got := br.Count(t, "g.data-conn.dropped[data-direction=server-to-client][data-target='192.0.2.11:8080']"); got != 1 {
		t.Errorf("%d dropped bounce connections drawn, want 1", got)
	}
	if got := br.Count(t, "details.mode-passive g.data-conn.started[data-direction=client-to-server]"); got < 3 {
		t.Errorf("%d passive data connections drawn, want at least 3", got)
	}
	if got := br.Count(t, "details.mode-active g.data-conn.started[data-direction=server-to-client]"); got != 3 {
		t.Errorf("%d active data connections drawn, want 3", got)
	}
	// DEMO_SCREENSHOT=../docs/report.png keeps a picture of the report
	// for the README: the summary, a passive session, an active one and
	// the bounce (the other sessions taken off the page).
	if shot := os.Getenv("DEMO_SCREENSHOT"); shot != "" {
		browsertest.Eval[bool](t, br, `(() => {
			const s = [...document.querySelectorAll('details.session')];
			const keep = [s.find(e => e.dataset.mode === 'passive'), s.find(e => e.dataset.mode === 'active'), s.find(e => e.dataset.refused !== '0')];
			s.filter(e => !keep.includes(e)).forEach(e => e.remove());
			document.getElementById('legend').remove();
			return true })()`)
		png, err := chromedp.Run(br.Ctx, chromedp.Screenshot(chromedp.CSS("body")))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(shot, png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
