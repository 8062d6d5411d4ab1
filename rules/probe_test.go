package rules

import (
	"errors"
	"testing"

	"github.com/ftpgate/ftpgate/internal/netnstest"
)

// TestProbe: a free name probes fine, and so does it again after the
// probe (which creates nothing); an owned table is busy.
func TestProbe(t *testing.T) {
	ns := netnstest.New(t)
	for range 2 {
		if err := Probe(DefaultTable, int(ns)); err != nil {
			t.Fatalf("Probe with no table: %v", err)
		}
	}
	if got := netnstest.Nft(t, ns, "list", "tables"); got != "" {
		t.Fatalf("Probe left tables behind: %q", got)
	}
	openTest(t, ns)
	if err := Probe(DefaultTable, int(ns)); !errors.Is(err, ErrTableBusy) {
		t.Fatalf("Probe of an owned table: %v, want ErrTableBusy", err)
	}
}
