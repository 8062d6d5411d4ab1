package conntrack

import (
	"net/netip"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/reassembly"
)

// assemblerContext carries a packet's capture info through reassembly.
type assemblerContext struct{ ci gopacket.CaptureInfo }

func (c *assemblerContext) GetCaptureInfo() gopacket.CaptureInfo { return c.ci }

// streamFactory creates one stream per control connection.
type streamFactory struct{ t *Tracker }

func (f *streamFactory) New(netFlow, tcpFlow gopacket.Flow, tcp *layers.TCP, ac reassembly.AssemblerContext) reassembly.Stream {
	src, _ := netip.AddrFromSlice(netFlow.Src().Raw())
	dst, _ := netip.AddrFromSlice(netFlow.Dst().Raw())
	a := netip.AddrPortFrom(src, uint16(tcp.SrcPort))
	b := netip.AddrPortFrom(dst, uint16(tcp.DstPort))
	// Who is the client: the sender of a bare SYN, the receiver of a
	// SYN-ACK, else the side not on a control port.
	firstIsClient := f.t.controls[b.Port()]
	switch {
	case tcp.SYN && !tcp.ACK:
		firstIsClient = true
	case tcp.SYN && tcp.ACK:
		firstIsClient = false
	}
	client, server := a, b
	if !firstIsClient {
		client, server = b, a
	}
	s := f.t.newSession(client, server, ac.GetCaptureInfo().Timestamp)
	return &stream{s: s, firstIsClient: firstIsClient}
}

// stream adapts a Session to gopacket's reassembly.
type stream struct {
	s             *Session
	firstIsClient bool
	lingering     bool // ended by RST, still in the reassembly pool
}

func (st *stream) dir(d reassembly.TCPFlowDirection) int {
	if (d == reassembly.TCPDirClientToServer) == st.firstIsClient {
		return fromClient
	}
	return fromServer
}

// Accept takes every segment. A direction whose first segment is not a
// SYN was picked up mid-stream: start it there, at the next line boundary.
func (st *stream) Accept(tcp *layers.TCP, ci gopacket.CaptureInfo, d reassembly.TCPFlowDirection, nextSeq reassembly.Sequence, start *bool, ac reassembly.AssemblerContext) bool {
	if st.s.ended {
		return false
	}
	if tcp.RST {
		// A reset ends the whole connection, but reassembly closes only
		// the half it came on; end the session now. Its entry in the
		// reassembly pool stays until the other half closes or idles out,
		// and counts against the session cap meanwhile.
		t := st.s.tracker
		t.endSession(st.s, "control connection reset")
		st.lingering = true
		t.lingering++
		key := makeConnKey(st.s.Client, st.s.Server)
		r, ok := t.reused[key]
		if !ok {
			r = &reuse{}
			t.reused[key] = r
		}
		r.lingering++
		return false
	}
	if nextSeq == reassembly.Sequence(-1) && !tcp.SYN && !*start {
		*start = true
		st.s.pickUp(st.dir(d))
	}
	return true
}

func (st *stream) ReassembledSG(sg reassembly.ScatterGather, ac reassembly.AssemblerContext) {
	d, _, _, skip := sg.Info()
	dir := st.dir(d)
	if skip > 0 {
		st.s.tracker.stats.GapBytes += uint64(skip)
		st.s.gap(dir)
	}
	n, _ := sg.Lengths()
	if n == 0 {
		return
	}
	st.s.feed(dir, sg.Fetch(n), ac.GetCaptureInfo().Timestamp)
}

func (st *stream) ReassemblyComplete(ac reassembly.AssemblerContext) bool {
	t := st.s.tracker
	key := makeConnKey(st.s.Client, st.s.Server)
	if st.lingering {
		st.lingering = false
		t.lingering--
		if r, ok := t.reused[key]; ok {
			r.lingering--
		}
	}
	defer t.forgetReuse(key)
	reason := "control connection closed"
	if t := st.s.tracker; t.now.Sub(st.s.Last) >= t.cfg.IdleTimeout {
		reason = "control connection idle"
	}
	st.s.tracker.endSession(st.s, reason)
	return true
}
