package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestSdNotify sends to a socket named by a path and to an abstract
// one, as systemd names them in NOTIFY_SOCKET, and to none.
func TestSdNotify(t *testing.T) {
	for _, name := range []string{
		filepath.Join(t.TempDir(), "notify"),
		fmt.Sprintf("@ftpgate-test-notify-%d", os.Getpid()),
	} {
		ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Setenv("NOTIFY_SOCKET", name)
		if err := sdNotify("READY=1\nSTATUS=testing"); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		b := make([]byte, 256)
		_ = ln.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := ln.Read(b)
		if err != nil || string(b[:n]) != "READY=1\nSTATUS=testing" {
			t.Errorf("%s: received %q, %v", name, b[:n], err)
		}
		ln.Close()
	}
	t.Setenv("NOTIFY_SOCKET", "")
	if err := sdNotify("READY=1"); err != nil {
		t.Errorf("without NOTIFY_SOCKET: %v", err)
	}
	t.Setenv("NOTIFY_SOCKET", "relative")
	if err := sdNotify("READY=1"); err == nil {
		t.Errorf("NOTIFY_SOCKET=relative: no error")
	}
}
