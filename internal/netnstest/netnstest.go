// Package netnstest gives tests throwaway network namespaces: nftables
// and sockets in them, on a thread of their own, without touching the
// host's. Functions skip the test unless it runs as root.
package netnstest

import (
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// New creates a throwaway network namespace and returns a handle to
// it; the calling goroutine stays in its own namespace. Skips unless root.
func New(t testing.TB) netns.NsHandle {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to create a network namespace and program nftables")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("netns.Get: %v", err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Fatalf("netns.New: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatalf("netns.Set: %v", err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// In runs f on a thread inside ns.
func In(t testing.TB, ns netns.NsHandle, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		// The thread is left locked on purpose: it ends with the goroutine
		// and is then discarded instead of returning to the pool in ns.
		if err := netns.Set(ns); err != nil {
			t.Errorf("netns.Set: %v", err)
			return
		}
		f()
	}()
	<-done
}

// Nft runs the nft command inside ns and returns its output.
func Nft(t testing.TB, ns netns.NsHandle, args ...string) string {
	t.Helper()
	var out []byte
	var err error
	In(t, ns, func() { out, err = exec.Command("nft", args...).CombinedOutput() })
	if err != nil {
		t.Fatalf("nft %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
