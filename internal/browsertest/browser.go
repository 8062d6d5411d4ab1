// Package browsertest drives a headless Chromium for tests of ftpgate's
// HTML report: it loads a file, evaluates JavaScript on it, and records
// every error the page logs and every request it makes.
package browsertest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// Browser is a headless Chromium driven over the DevTools protocol,
// recording what a page logs as an error and every request it makes.
type Browser struct {
	Ctx      context.Context
	mu       sync.Mutex
	errors   []string
	requests []string
}

// chromium is Debian's Chromium; make test installs it.
const chromium = "/usr/bin/chromium"

// New starts Chromium, or skips the test when there is none.
func New(t *testing.T) *Browser {
	t.Helper()
	path := os.Getenv("CHROMIUM")
	if path == "" {
		path = chromium
	}
	if _, err := exec.LookPath(path); err != nil {
		t.Skipf("skipping: no Chromium at %s (make test installs Debian's chromium; CHROMIUM names another)", path)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-component-update", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1000, 900))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 90*time.Second)
	t.Cleanup(func() { cancelTimeout(); cancel(); cancelAlloc() })
	b := &Browser{Ctx: ctx}
	err := chromedp.Listen(ctx, func(ev any) {
		b.mu.Lock()
		defer b.mu.Unlock()
		switch ev := ev.(type) {
		case *runtime.EventExceptionThrown:
			b.errors = append(b.errors, "exception: "+ev.ExceptionDetails.Text)
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeWarning {
				b.errors = append(b.errors, fmt.Sprintf("console.%s", ev.Type))
			}
		case *log.EventEntryAdded:
			if ev.Entry.Level == log.EntryLevelError || ev.Entry.Level == log.EntryLevelWarning {
				b.errors = append(b.errors, "log: "+ev.Entry.Text)
			}
		case *network.EventRequestWillBeSent:
			b.requests = append(b.requests, ev.Request.URL)
		}
	})
	if err != nil {
		t.Fatalf("starting Chromium: %v", err)
	}
	return b
}

// Open loads a file and returns how long it took to its load event.
func (b *Browser) Open(t *testing.T, file string) time.Duration {
	t.Helper()
	b.mu.Lock()
	b.errors, b.requests = nil, nil
	b.mu.Unlock()
	abs, _ := filepath.Abs(file)
	start := time.Now()
	if err := chromedp.Do(b.Ctx, chromedp.Navigate("file://"+abs)); err != nil {
		t.Fatalf("loading %s: %v", file, err)
	}
	return time.Since(start)
}

// Eval runs a JavaScript expression on the page.
func Eval[T any](t *testing.T, b *Browser, js string) T {
	t.Helper()
	v, err := chromedp.Run(b.Ctx, chromedp.Evaluate[T](js))
	if err != nil {
		t.Fatalf("%s: %v", js, err)
	}
	return v
}

// Count is the number of elements selector matches.
func (b *Browser) Count(t *testing.T, selector string) int {
	t.Helper()
	return Eval[int](t, b, fmt.Sprintf("document.querySelectorAll(%q).length", selector))
}

// Text is the text of the first element selector matches.
func (b *Browser) Text(t *testing.T, selector string) string {
	t.Helper()
	return Eval[string](t, b, fmt.Sprintf("(document.querySelector(%q)||{}).textContent||''", selector))
}

// Clean fails the test for any error the page logged and any request
// beyond the page itself: the report must need nothing from outside.
func (b *Browser) Clean(t *testing.T, file string) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, e := range b.errors {
		t.Errorf("%s: the page logged %s", file, e)
	}
	for _, r := range b.requests {
		if !strings.HasSuffix(r, filepath.Base(file)) {
			t.Errorf("%s: the page requested %s", file, r)
		}
	}
}
