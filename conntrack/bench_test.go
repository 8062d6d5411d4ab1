package conntrack

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"

	"github.com/ftpgate/ftpgate/rules"
)

// BenchmarkPacketPath measures the whole path from captured frames to
// pinhole decisions: decoding, reassembly, line splitting, parsing,
// pairing and policy, with a dry-run backend. One operation is one
// control session of 100 PASV/227 exchanges (about 400 packets).
func BenchmarkPacketPath(b *testing.B) {
	c := newConn(b, cli, srv)
	pkts := c.greeted()
	lines := 0
	for i := range 100 {
		pkts = append(pkts, c.send(true, "PASV\r\n"))
		pkts = append(pkts, c.packet(false, c.sseq, "A", nil))
		pkts = append(pkts, c.send(false, fmt.Sprintf("227 Entering Passive Mode (198,51,100,20,%d,%d).\r\n", 100+i/256, i%256+1)))
		pkts = append(pkts, c.packet(true, c.cseq, "A", nil))
		lines += 2
	}
	pkts = append(pkts, c.fin(true), c.fin(false), c.packet(true, c.cseq, "A", nil))
	var bytes int64
	for _, p := range pkts {
		bytes += int64(len(p))
	}
	log := slog.New(slog.DiscardHandler)
	b.SetBytes(bytes)
	b.ReportAllocs()
	for b.Loop() {
		tr := NewTracker(Config{Logger: log}, rules.NewDryRun())
		for _, p := range pkts {
			tr.HandlePacket(p, layers.LinkTypeEthernet, time.Time{})
		}
		if err := tr.Commit(); err != nil {
			b.Fatal(err)
		}
		if tr.Stats().ChannelsOpened != 100 {
			b.Fatalf("opened %d channels, want 100", tr.Stats().ChannelsOpened)
		}
	}
	b.ReportMetric(float64(len(pkts)), "packets/op")
	b.ReportMetric(float64(lines), "lines/op")
}

// BenchmarkFloodSegment measures what one control segment full of cheap
// input costs: 1,400 bare LFs (a flood of empty lines) against 1,400
// bytes of a line too long, one segment per operation, on a live
// session.
func BenchmarkFloodSegment(b *testing.B) {
	for name, payload := range map[string]string{
		"empty lines": strings.Repeat("\n", 1400),
		"long line":   strings.Repeat("x", 1400),
	} {
		b.Run(name, func(b *testing.B) {
			c := newConn(b, cli, srv)
			tr := NewTracker(Config{Logger: slog.New(slog.DiscardHandler)}, rules.NewDryRun())
			for _, p := range c.greeted() {
				tr.HandlePacket(p, layers.LinkTypeEthernet, time.Time{})
			}
			var pkts [][]byte
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			for b.Loop() {
				if len(pkts) == 0 {
					// Crafting the segments is not what is measured.
					b.StopTimer()
					for range 1024 {
						pkts = append(pkts, c.send(true, payload))
					}
					b.StartTimer()
				}
				tr.HandlePacket(pkts[0], layers.LinkTypeEthernet, time.Time{})
				pkts = pkts[1:]
			}
		})
	}
}
