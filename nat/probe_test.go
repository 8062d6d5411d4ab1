package nat

import (
	"testing"

	"github.com/ftpgate/ftpgate/internal/netnstest"
)

func TestProbeConntrack(t *testing.T) {
	ns := netnstest.New(t)
	if err := ProbeConntrack(int(ns)); err != nil {
		t.Fatalf("ProbeConntrack: %v", err)
	}
}
