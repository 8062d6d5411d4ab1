package main

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ftpgate/ftpgate/capture"
	"github.com/ftpgate/ftpgate/conntrack"
	"github.com/ftpgate/ftpgate/nat"
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
	// packets is the NAT packet path, if it runs: swept every round, and
	// its state saved (saveState) before the segments that changed it
	// go on.
	packets   *nat.PacketPath
	saveState func(now time.Time, clean bool)
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

// proxied hands an event of the control proxy to the tracker.
func (d *daemonLoop) proxied(ev *nat.Event) {
	switch ev.Kind {
	case nat.Opened:
		d.t.OpenProxied(ev.ID, ev.Conn, ev.Time)
	case nat.Bytes:
		ev.Out, ev.Through, ev.Close = d.t.ProxiedBytes(ev.ID, ev.FromServer, ev.Data, ev.Ack, ev.Time)
		d.proxiedLine = true
	case nat.EOF:
		d.t.ProxiedEOF(ev.ID, ev.FromServer, ev.Time)
	case nat.Closed:
		d.t.CloseProxied(ev.ID, ev.Reason, ev.Time)
	}
}

// proxySource is the control proxy as a source of the loop: its events
// go to the loop's tracker as they are read, and the bytes they carry go
// on at Release, after Tick has committed what they opened.
type proxySource struct {
	controlProxy
	loop *daemonLoop
}

// controlProxy is what the loop uses of *nat.Proxy: an interface so that
// the loop's tests can stand in for the proxy, whose tproxy listeners
// need root.
type controlProxy interface {
	Fd() int
	Read(fn func(*nat.Event))
	Release()
	SharesProcessor() bool
	Close() error
}

func (s proxySource) Read(func(*capture.Packet)) error {
	s.controlProxy.Read(s.loop.proxied)
	return nil
}

func (s proxySource) Release() error {
	s.controlProxy.Release()
	return nil
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
	if d.packets != nil {
		d.packets.Sweep(now)
		if d.packets.SaveDue(now) {
			d.saveState(now, false)
		}
	}
	if d.heldControl {
		d.heldControl = false
		// Only the peers: pinholes keep their commit delay. A failed
		// commit must not cut the control connection: it goes on.
		_ = d.t.CommitPeers()
	}
	next := d.t.Tick(now)
	if d.packets != nil && d.packets.SaveDue(now.Add(time.Second)) && next.After(now.Add(time.Second)) {
		// Connections came or went: the state file is written within
		// a second, traffic or not.
		next = now.Add(time.Second)
	}
	return next
}
