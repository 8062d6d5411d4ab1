package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ftpgate/ftpgate/conntrack"
	"github.com/ftpgate/ftpgate/rules"
)

// metrics are ftpgate's Prometheus metrics. Counters and gauges are read
// from the tracker's snapshot at each scrape, so the packet path pays
// nothing for them; the two histograms are observed where they happen.
type metrics struct {
	reg        *prometheus.Registry
	heldWait   prometheus.Histogram
	commitTime prometheus.Histogram
}

// metricDef is one metric read from the snapshot.
type metricDef struct {
	name, help string
	gauge      bool
	value      func(conntrack.Stats) float64
}

func u(f func(conntrack.Stats) uint64) func(conntrack.Stats) float64 {
	return func(s conntrack.Stats) float64 { return float64(f(s)) }
}

// snapshotMetrics is the table README's metrics section documents.
var snapshotMetrics = []metricDef{
	{"ftpgate_sessions", "Control sessions tracked now, half-open and proxied ones included.", true, func(s conntrack.Stats) float64 { return float64(s.SessionsTracked + s.Proxied) }},
	{"ftpgate_sessions_half_open", "Control connections that have carried no FTP yet.", true, func(s conntrack.Stats) float64 { return float64(s.HalfOpen) }},
	{"ftpgate_sessions_proxied", "Translated control sessions (NAT) now, in the packet path or through the control proxy.", true, func(s conntrack.Stats) float64 { return float64(s.Proxied) }},
	{"ftpgate_sessions_translated_total", "Translated control sessions the NAT packet path followed, picked up after a restart included.", false, u(func(s conntrack.Stats) uint64 { return s.SessionsTranslated })},
	{"ftpgate_sessions_started_total", "Control sessions that carried FTP.", false, u(func(s conntrack.Stats) uint64 { return s.SessionsStarted })},
	{"ftpgate_sessions_ended_total", "Control sessions ended.", false, u(func(s conntrack.Stats) uint64 { return s.SessionsEnded })},
	{"ftpgate_sessions_refused_total", "New control sessions refused at the session or half-open cap.", false, u(func(s conntrack.Stats) uint64 { return s.SessionsRefused + s.HalfOpenRefused })},
	{"ftpgate_pinholes_open", "Pinholes open now, committed to the kernel or not yet.", true, func(s conntrack.Stats) float64 { return float64(s.PinholesOpen) }},
	{"ftpgate_pinholes_opened_total", "Pinholes opened (channels accepted).", false, u(func(s conntrack.Stats) uint64 { return s.ChannelsOpened })},
	{"ftpgate_data_connections_admitted_total", "Data connections admitted that the admin's ruleset let through.", false, u(func(s conntrack.Stats) uint64 { return s.DataAdmitted })},
	{"ftpgate_data_connections_dropped_by_ruleset_total", "Data connections ftpgate admitted that the admin's ruleset dropped.", false, u(func(s conntrack.Stats) uint64 { return s.AdmittedDropped })},
	{"ftpgate_held_syns_total", "Data SYNs the kernel held because they came before their pinhole (inline).", false, u(func(s conntrack.Stats) uint64 { return s.SYNsHeld })},
	{"ftpgate_held_syns_admitted_total", "Held data SYNs ftpgate admitted itself.", false, u(func(s conntrack.Stats) uint64 { return s.SYNsAdmitted })},
	{"ftpgate_control_lines_total", "Control lines parsed.", false, u(func(s conntrack.Stats) uint64 { return s.Lines })},
	{"ftpgate_segments_bad_checksum_total", "Control segments with a wrong IP or TCP checksum, ignored.", false, u(func(s conntrack.Stats) uint64 { return s.BadChecksums })},
	{"ftpgate_segments_out_of_window_total", "Control segments and resets outside the receiver's window, ignored.", false, u(func(s conntrack.Stats) uint64 { return s.OutOfWindow })},
	{"ftpgate_reassembly_gap_bytes_total", "Control bytes never seen (lost from the capture or beyond a buffer).", false, u(func(s conntrack.Stats) uint64 { return s.GapBytes })},
	{"ftpgate_reassembly_out_of_order_dropped_total", "Out-of-order control segments dropped for lack of room.", false, u(func(s conntrack.Stats) uint64 { return s.OutOfOrderDropped })},
	{"ftpgate_reassembly_conflicts_total", "Two copies of the same control bytes that differed.", false, u(func(s conntrack.Stats) uint64 { return s.Conflicts })},
	{"ftpgate_capture_drops_total", "Times the kernel could not copy control traffic to ftpgate (NFLOG socket overflow).", false, u(func(s conntrack.Stats) uint64 { return s.CopiesLost })},
	{"ftpgate_backend_errors_total", "nftables operations that failed.", false, u(func(s conntrack.Stats) uint64 { return s.BackendErrors })},
	{"ftpgate_nat_rewrites_total", "Announcements rewritten for the far side of a NAT.", false, u(func(s conntrack.Stats) uint64 { return s.NATRewrites })},
	{"ftpgate_nat_mappings_total", "NAT mappings of data connections made.", false, u(func(s conntrack.Stats) uint64 { return s.NATMappings })},
	{"ftpgate_scoped_ranges_open", "FTPS scoped ranges open now (one per encrypted session).", true, func(s conntrack.Stats) float64 { return float64(s.Scoped) }},
	{"ftpgate_scoped_ranges_opened_total", "FTPS scoped ranges opened.", false, u(func(s conntrack.Stats) uint64 { return s.ScopedOpened })},
	{"ftpgate_scoped_ranges_refused_total", "Encrypted sessions that got no scoped range (none configured, a cap).", false, u(func(s conntrack.Stats) uint64 { return s.ScopedRefused })},
	{"ftpgate_lines_not_reply_start_total", "Server lines that looked like replies where the server started none (after a bare LF, an echo of the client), not taken as replies.", false, u(func(s conntrack.Stats) uint64 { return s.NotReplyStart })},
	{"ftpgate_unsolicited_auth_total", "234 replies that answered no AUTH, not taken as TLS.", false, u(func(s conntrack.Stats) uint64 { return s.UnsolicitedAuth })},
}

type snapshotCollector struct {
	snap    func() conntrack.Stats
	descs   []*prometheus.Desc
	closed  *prometheus.Desc
	refused *prometheus.Desc
	scoped  *prometheus.Desc
}

func (c *snapshotCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
	ch <- c.closed
	ch <- c.refused
	ch <- c.scoped
}

func (c *snapshotCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.snap()
	for i, m := range snapshotMetrics {
		t := prometheus.CounterValue
		if m.gauge {
			t = prometheus.GaugeValue
		}
		ch <- prometheus.MustNewConstMetric(c.descs[i], t, m.value(s))
	}
	for i, n := range s.ClosedBy {
		ch <- prometheus.MustNewConstMetric(c.closed, prometheus.CounterValue, float64(n), conntrack.CloseReasons[i])
	}
	for i, n := range s.RefusedBy {
		ch <- prometheus.MustNewConstMetric(c.refused, prometheus.CounterValue, float64(n), conntrack.RefusalReasons[i])
	}
	for i, n := range s.ScopedClosedBy {
		ch <- prometheus.MustNewConstMetric(c.scoped, prometheus.CounterValue, float64(n), conntrack.CloseReasons[i])
	}
}

func newMetrics(snap func() conntrack.Stats) *metrics {
	reg := prometheus.NewRegistry()
	c := &snapshotCollector{snap: snap,
		closed:  prometheus.NewDesc("ftpgate_pinholes_closed_total", "Pinholes closed, by reason.", []string{"reason"}, nil),
		refused: prometheus.NewDesc("ftpgate_channels_refused_total", "Announced data channels refused, by reason.", []string{"reason"}, nil),
		scoped:  prometheus.NewDesc("ftpgate_scoped_ranges_closed_total", "FTPS scoped ranges closed, by reason.", []string{"reason"}, nil),
	}
	for _, m := range snapshotMetrics {
		c.descs = append(c.descs, prometheus.NewDesc(m.name, m.help, nil, nil))
	}
	m := &metrics{
		reg: reg,
		heldWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "ftpgate_held_syn_wait_seconds", Help: "How long a held data SYN waited in ftpgate, from being read to its verdict.",
			Buckets: prometheus.ExponentialBuckets(10e-6, 4, 9), // 10 µs to 0.65 s
		}),
		commitTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "ftpgate_commit_duration_seconds", Help: "How long each nftables commit took.",
			Buckets: prometheus.ExponentialBuckets(10e-6, 4, 9),
		}),
	}
	build := prometheus.NewGauge(prometheus.GaugeOpts{Name: "ftpgate_build_info", Help: "Always 1; the labels say which build runs.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()}})
	build.Set(1)
	reg.MustRegister(c, m.heldWait, m.commitTime, build)
	return m
}

// serve answers /metrics on addr until ctx ends.
func (m *metrics) serve(ctx context.Context, addr string, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--metrics-listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", "error", err)
		}
	}()
	context.AfterFunc(ctx, func() { _ = srv.Close() })
	log.Info("metrics", "listen", ln.Addr().String(), "path", "/metrics")
	return nil
}

// timedBackend times the commits of a backend.
type timedBackend struct {
	rules.Backend
	h prometheus.Histogram
}

func (b timedBackend) Commit() error {
	start := time.Now()
	err := b.Backend.Commit()
	b.h.Observe(time.Since(start).Seconds())
	return err
}

func (b timedBackend) CommitPeers() error {
	start := time.Now()
	err := b.Backend.CommitPeers()
	b.h.Observe(time.Since(start).Seconds())
	return err
}
