package main

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftpgate/ftpgate/capture"
)

// TestStatusSocket: ftpgate status prints what the daemon's socket
// answers; a second daemon does not take the socket; closing removes it.
func TestStatusSocket(t *testing.T) {
	calls, err := capture.NewCalls()
	if err != nil {
		t.Fatal(err)
	}
	defer calls.Close()
	stop := make(chan struct{})
	defer close(stop)
	go func() { // the daemon's loop, for its calls alone
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
				_ = calls.Read(nil)
			}
		}
	}()
	path := filepath.Join(t.TempDir(), "run", "status.sock")
	log := slog.New(slog.DiscardHandler)
	ss, err := startStatus(path, calls, func() any { return sampleStatus() }, log)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket %v, %v; want mode 0600", fi, err)
	}
	var got, want bytes.Buffer
	if err := cmdStatus([]string{"--socket", path}, &got); err != nil {
		t.Fatal(err)
	}
	writeStatus(&want, sampleStatus())
	if got.String() != want.String() {
		t.Errorf("ftpgate status printed\n%s\nwant\n%s", got.String(), want.String())
	}
	if _, err := startStatus(path, calls, func() any { return nil }, log); err == nil || !strings.Contains(err.Error(), "another ftpgate answers on it") {
		t.Errorf("a second daemon on the socket: %v", err)
	}
	if err := ss.Close(); err != nil {
		t.Error(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("the socket is still there after Close: %v", err)
	}
	if err := cmdStatus([]string{"--socket", path}, &got); err == nil || !strings.Contains(err.Error(), "no daemon answers on") {
		t.Errorf("ftpgate status with no daemon: %v", err)
	}
}
