package rules

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ftpgate/ftpgate/internal/netnstest"
)

// BenchmarkCommitWith100kPinholes fills the sets with 100,000 pinholes
// (in batches of 1,000 commits) and then measures what one more costs:
// AddPinhole + Commit of a new element. Needs root; skips otherwise.
func BenchmarkCommitWith100kPinholes(b *testing.B) {
	if testing.Short() {
		b.Skip("skipping in -short mode")
	}
	ns := netnstest.New(b)
	n, err := Open(Config{Mark: 1, MarkMask: 1, MaxPinholes: 1 << 20, NetNS: int(ns)})
	if err != nil {
		b.Fatal(err)
	}
	defer n.Close()
	pin := func(i int) Pinhole {
		return Pinhole{
			Peer: netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}),
			Addr: netip.MustParseAddr("198.51.100.20"),
			Port: uint16(1024 + i%60000),
		}
	}
	const fill = 100000
	start := time.Now()
	for i := range fill {
		if err := n.AddPinhole(pin(i), time.Hour); err != nil {
			b.Fatal(err)
		}
		if i%1000 == 999 {
			if err := n.Commit(); err != nil {
				b.Fatal(err)
			}
		}
	}
	fillTime := time.Since(start)
	i := fill
	for b.Loop() {
		if err := n.AddPinhole(pin(i), time.Hour); err != nil {
			b.Fatal(err)
		}
		if err := n.Commit(); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(fillTime.Milliseconds()), "ms-to-fill-100k")
}
