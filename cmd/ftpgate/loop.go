package main

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ftpgate/ftpgate/capture"
	"github.com/ftpgate/ftpgate/conntrack"
	"github.com/ftpgate/ftpgate/rules"
)

// classifyLog tells the records of ftpgate's NFLOG group apart by the
// prefix of the rule that logged them (see rules).
func classifyLog(prefix []byte) (capture.Kind, bool) {
	switch string(prefix) {
	case "":
		return capture.Copy, true
	case rules.LogPrefixUsed:
		return capture.Used, true
	case rules.LogPrefixAdmitted:
		return capture.Admitted, true
	}
	return 0, false // the flush records carry nothing
}

// daemonLoop hands what capture brings in to the tracker, and the
// tracker's decisions on held packets back.
type daemonLoop struct {
	t   *conntrack.Tracker
	log *capture.LogReader
	// heldControl: a held control SYN was handled; its session's peers
	// must be in the kernel before it goes on.
	heldControl bool
	// proxiedLine: bytes of the control proxy were handled; what they
	// opened must be in the kernel before they go on.
	proxiedLine bool
	// heldAt: when the held data SYNs of this round were read.
	heldAt   []time.Time
	heldWait prometheus.Observer
}

func (d *daemonLoop) Handle(p *capture.Packet) {
	switch p.Kind {
	case capture.Copy:
		d.t.HandlePacket(p.Data, p.Link, p.Time)
	case capture.Used:
		d.t.UsedReport(p.Data)
	case capture.Admitted:
		d.t.AdmittedReport(p.Data)
	case capture.Opened:
		d.t.OpenProxied(p.Conn.ID, translation(p.Conn), p.Time)
	case capture.Bytes:
		p.Out, p.Through, p.Close = d.t.ProxiedBytes(p.Conn.ID, p.FromServer, p.Data, p.Ack, p.Time)
		d.proxiedLine = true
	case capture.EOF:
		d.t.ProxiedEOF(p.Conn.ID, p.FromServer, p.Time)
	case capture.Closed:
		d.t.CloseProxied(p.Conn.ID, string(p.Data), p.Time)
	case capture.Held:
		if d.t.IsControl(p.Data) {
			d.t.HandlePacket(p.Data, p.Link, p.Time)
			d.heldControl = true
			return
		}
		d.heldAt = append(d.heldAt, p.Time)
		switch d.t.AdmitHeldSYN(p.Data) {
		case conntrack.HeldAdmit:
			p.Verdict = capture.Admit
		case conntrack.HeldRetry:
			p.Verdict = capture.Retry
		}
	}
}

func (d *daemonLoop) Tick(now time.Time) time.Time {
	d.t.CopiesLost(d.log.Lost())
	defer func() {
		// Their verdicts go out right after Tick.
		for _, at := range d.heldAt {
			if d.heldWait != nil {
				d.heldWait.Observe(time.Since(at).Seconds())
			}
		}
		d.heldAt = d.heldAt[:0]
	}()
	if d.proxiedLine {
		d.proxiedLine = false
		// No commit delay: the far side may connect the moment it reads
		// the line. A failed commit is logged; the line still goes on.
		d.t.CommitNow()
	}
	if d.heldControl {
		d.heldControl = false
		// Only the peers: pinholes keep their commit delay. A failed
		// commit must not cut the control connection: it goes on.
		_ = d.t.CommitPeers()
	}
	return d.t.Tick(now)
}
