package test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/ftpgate/ftpgate/internal/browsertest"
)

// TestRunReport: ftpgate run --report DIR draws the daemon's own
// decisions for a class: after a passive transfer, an active one and a
// refused bounce through the lab's gateway, the page (loaded in
// Chromium) shows the three sessions, each data connection in the
// direction it went, and the refusal with its reason; it is written
// again at the stop.
func TestRunReport(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	dir := filepath.Join(t.TempDir(), "report")
	d := startFtpgate(t, "--report", dir)
	for _, x := range []transfer{
		curl("passive", "ftp://"+server4+"/file.bin", "--ftp-pasv", "--disable-epsv"),
		curl("active", "ftp://"+server4+"/file.bin", "--ftp-port", "-", "--disable-eprt"),
	} {
		if err := x.run(t); err != nil {
			t.Fatalf("%s: %v", x.name, err)
		}
	}
	if out, err := inNS(context.Background(), "client", "python3", "ftpclient.py", "raw", server4, "0",
		"PORT 198,51,100,20,0,80").CombinedOutput(); err != nil {
		t.Fatalf("ftpclient: %v %s", err, out)
	}
	d.waitLog(t, 5*time.Second, "channel closed", "command", "PORT", "reason", "data connection started")
	d.waitLog(t, 5*time.Second, "channel closed", "command", "PASV", "reason", "data connection started")
	time.Sleep(2500 * time.Millisecond) // the page is rewritten every 2 s
	page := filepath.Join(dir, "index.html")
	b := browsertest.New(t)
	check := func(when string) {
		b.Open(t, page)
		b.Clean(t, page)
		if got := b.Count(t, "details.session"); got != 3 {
			t.Errorf("%s: %d sessions drawn, want 3", when, got)
		}
		if got := b.Count(t, "details.mode-passive g.data-conn.started[data-direction=client-to-server]"); got != 1 {
			t.Errorf("%s: %d passive data connections drawn from the client, want 1", when, got)
		}
		if got := b.Count(t, "details.mode-active g.data-conn.started[data-direction=server-to-client]"); got != 1 {
			t.Errorf("%s: %d active data connections drawn from the server, want 1", when, got)
		}
		reason := browsertest.Eval[string](t, b, `(document.querySelector('g.decision.refused')||{getAttribute:()=>''}).getAttribute('data-reason')`)
		if !strings.Contains(reason, "198.51.100.20") {
			t.Errorf("%s: the refused bounce is drawn with reason %q", when, reason)
		}
		if got := b.Text(t, "#n-opened"); got != "2" {
			t.Errorf("%s: %s pinholes opened in the summary, want 2", when, got)
		}
		// Newest first: the bounce, last, is the first session drawn.
		if got := browsertest.Eval[string](t, b, `document.querySelector('details.session').dataset.refused`); got != "1" {
			t.Errorf("%s: the first session drawn is not the newest (the refused bounce)", when)
		}
		if b.Count(t, "input#follow[type=checkbox]") != 1 {
			t.Errorf("%s: no switch to follow the page live", when)
		}
	}
	check("while running")
	d.stop(t)
	d.waitLog(t, time.Second, "report written")
	check("after the stop")
	// Following the page reloads it every 5 s, and stays on.
	browsertest.Eval[bool](t, b, `window.beforeReload = true`)
	if err := chromedp.Do(b.Ctx, chromedp.Click(chromedp.CSS("#follow"))); err != nil {
		t.Fatal(err)
	}
	time.Sleep(6 * time.Second)
	if browsertest.Eval[bool](t, b, `window.beforeReload === true`) || !browsertest.Eval[bool](t, b, `document.getElementById('follow').checked`) {
		t.Error("following the page did not reload it, or did not stay on")
	}
	if data, _ := os.ReadFile(page); strings.Contains(string(data), "PASS ") && !strings.Contains(string(data), "PASS ********") {
		t.Error("the report shows a password")
	}
}
