package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/ftpgate/ftpgate/conntrack"
	"github.com/ftpgate/ftpgate/report"
)

// reportSessions is how many sessions the daemon's report keeps (the
// latest; older ones are only counted), which bounds its memory.
const reportSessions = 500

// reportEvents bounds the events the daemon's report holds in all
// (150 bytes each, up to some 450 with a line or a channel: about
// 22 MiB at most).
const reportEvents = 50_000

// reportEvery is how often the daemon's report is written, when
// something happened.
const reportEvery = 2 * time.Second

// startReport makes the daemon draw its own decisions into dir/index.html
// (see package report): it sets cfg's hooks, writes the page every
// reportEvery while ctx lives, and once more when finish is called.
func startReport(ctx context.Context, dir string, cfg *conntrack.Config, log *slog.Logger) (finish func(), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("--report: %w", err)
	}
	path := filepath.Join(dir, "index.html")
	host, _ := os.Hostname()
	rep := report.New(report.Options{Title: "ftpgate on " + host,
		Source: fmt.Sprintf("What ftpgate run saw and decided since %s UTC (the latest %d sessions; the page is rewritten every %v while ftpgate runs).",
			time.Now().UTC().Format("2006-01-02 15:04:05"), reportSessions, reportEvery),
		MaxSessions: reportSessions, MaxEvents: 200, MaxTotalEvents: reportEvents, Live: true})
	cfg.Observe(rep)
	if err := rep.WriteFile(path); err != nil {
		return nil, fmt.Errorf("--report: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(reportEvery)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if rep.Changed() {
				if err := rep.WriteFile(path); err != nil {
					log.Error("writing the report", "error", err)
				}
			}
		}
	}()
	log.Info("writing a report of every session", "path", path, "every", reportEvery.String())
	return func() {
		cancel()
		<-done
		if err := rep.WriteFile(path); err != nil {
			log.Error("writing the report", "error", err)
			return
		}
		log.Info("report written", "path", path)
	}, nil
}
