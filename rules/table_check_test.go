package rules

import (
	"errors"
	"testing"

	"github.com/ftpgate/ftpgate/internal/netnstest"
)

// TestCheckTable: a free name probes fine, and so does it again after the
// probe (which creates nothing); an owned table is busy.
func TestCheckTable(t *testing.T) {
	ns := netnstest.New(t)
	for range 2 {
		if err := CheckTable(DefaultTable, int(ns)); err != nil {
			t.Fatalf("CheckTable with no table: %v", err)
		}
	}
	if got := netnstest.Nft(t, ns, "list", "tables"); got != "" {
		t.Fatalf("CheckTable left tables behind: %q", got)
	}
	openTest(t, ns)
	if err := CheckTable(DefaultTable, int(ns)); !errors.Is(err, ErrTableBusy) {
		t.Fatalf("CheckTable of an owned table: %v, want ErrTableBusy", err)
	}
}
