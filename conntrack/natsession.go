package conntrack

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/ftpgate/ftpgate/internal/source"
	"github.com/ftpgate/ftpgate/nat"
	"github.com/ftpgate/ftpgate/parser"
	"github.com/ftpgate/ftpgate/rules"
)

// natSession is the part of a Session that runs through the control
// proxy: it is fed the bytes the proxy reads, both ways, and what it
// sends on may differ from what it read (see Tracker.ProxiedBytes).
type natSession struct {
	id uint64
	tr nat.Translation
	in [2]uint32 // bytes read so far, per direction: their sequence numbers
	// out is what goes on for the bytes of the call being handled, per
	// direction (each direction's relay waits for its own).
	out [2][]byte
	// rewrite is set while a line is handled: what to send instead.
	rewrite []byte
	// held: lines of a multi-line reply that announces an address, sent
	// with its last line (which may be rewritten whole).
	held       []byte
	scratch    []byte
	serverSeen bool      // the server has sent something
	closingAt  time.Time // one side has closed
	// packet: the session runs in the packet path (nat.PacketPath), not
	// through the proxy. Each call then covers one segment's new bytes,
	// which go on as they came but for whole lines rewritten (edits);
	// nothing is held back, and a line begun in an earlier segment has
	// gone on in part and cannot be rewritten.
	packet   bool
	segStart uint32    // where the segment being handled starts
	lineAt   uint32    // where the line being handled starts
	edits    []natEdit // this segment's rewritten lines
	// Per side, in the packet path: where its bytes read so far end,
	// the acknowledgement of the other side its latest segment carried
	// (in the other side's numbers), and whether it has sent anything;
	// for pairing's quiet points (see pairing.quietPoint).
	delivered, lastAck [2]uint32
	started            [2]bool
}

// natEdit is a line of the segment being handled, rewritten: bytes
// [start, end) are replaced by text.
type natEdit struct {
	start, end uint32
	text       []byte
}

// splitLine says why the line being handled cannot be rewritten, or "".
func (n *natSession) splitLine() string {
	if n.packet && seqAfter(n.segStart, n.lineAt) {
		return "the line began in an earlier segment, which has gone on as it came: the packet path rewrites lines whole within one segment"
	}
	return ""
}

// applyEdits is the segment's bytes (data, at seq) with its rewritten
// lines in place.
func (n *natSession) applyEdits(data []byte, seq uint32) []byte {
	if len(n.edits) == 0 {
		return data
	}
	out := make([]byte, 0, len(data)+64)
	at := 0
	for _, e := range n.edits {
		from, to := int(e.start-seq), int(e.end-seq)
		if from < at || to > len(data) {
			continue // not within this segment: refused before it was planned (splitLine)
		}
		out = append(append(out, data[at:from]...), e.text...)
		at = to
	}
	return append(out, data[at:]...)
}

// send appends bytes to what goes on in direction d, after any lines
// held before them, so that nothing goes on out of order.
func (n *natSession) send(d int, b []byte) {
	if n.packet {
		return // the segment's bytes go on as they came (applyEdits)
	}
	if d == fromServer && len(n.held) > 0 {
		n.out[d] = append(n.out[d], n.held...)
		n.held = n.held[:0]
	}
	n.out[d] = append(n.out[d], b...)
}

// lineDone sends on one line the session has handled: as it came, or
// rewritten; a line of a multi-line announcement reply waits for the
// reply's last line. holding says the reply is still open.
func (n *natSession) lineDone(d int, l line, holding bool, limit int) {
	if n.packet {
		if n.rewrite != nil {
			n.edits = append(n.edits, natEdit{start: l.start, end: l.end, text: n.rewrite})
			n.rewrite = nil
		}
		return
	}
	n.scratch = n.scratch[:0]
	if l.tooLong {
		return // its bytes went on as they came (lineSplitter.pass)
	}
	var b []byte
	switch {
	case l.blanks > 0:
		b = l.text
	case n.rewrite != nil:
		b, n.rewrite = n.rewrite, nil
		if d == fromServer {
			n.held = n.held[:0] // a rewritten reply replaces the lines before
		}
	default:
		n.scratch = rawLine(n.scratch, l)
		b = n.scratch
	}
	if d == fromServer && (holding || len(n.held) > 0) {
		n.held = append(n.held, b...)
		if holding && len(n.held) <= limit {
			return
		}
		n.send(d, nil) // the held lines, this one last among them
		return
	}
	n.send(d, b)
}

// rawLine is a line as it came: its text and its line end.
func rawLine(buf []byte, l line) []byte {
	buf = append(buf, l.text...)
	if l.crlf {
		return append(buf, '\r', '\n')
	}
	return append(buf, '\n')
}

// heldBack is how many bytes of direction d the session holds back:
// the end of a line still to come (inLine), and for the server the lines
// of a multi-line reply held for its last.
func (n *natSession) heldBack(d, inLine int) int {
	if d == fromServer {
		return inLine + len(n.held)
	}
	return inLine
}

// natPlan is how one announcement on a proxied session is carried
// through the gateway.
type natPlan struct {
	pinhole rules.Pinhole // the data connection as the forward hook sees it
	maps    []rules.Mapping
	public  netip.AddrPort // the mapped public address:port, held in natPorts, if any
	source  netip.Prefix   // the client whose share it counts against
	line    []byte         // the line the far side gets instead, if rewritten
	// For active mode, decided when the server answers:
	channel Channel
	timeout time.Duration
}

// describe adds to ch what the far side is told and where its data
// connection goes.
func (p natPlan) describe(ch Channel) Channel {
	if p.public.IsValid() {
		ch.Sent = p.public
	}
	if len(p.maps) > 0 {
		ch.MappedTo = netip.AddrPortFrom(p.pinhole.Addr, p.pinhole.Port)
	}
	return ch
}

// planNAT works out the pinhole, the mappings and the rewrite for an
// announcement the policy accepted on a proxied session.
//
// The data connection must end at the announcer's own address (inside)
// whatever the far side is told. When the announcer's address differs on
// the far side (seen), the far side connects to seen on a port ftpgate
// picks from --nat-ports, and a DNAT mapping sends that port to inside
// and the announced port; the line the far side gets is rewritten to
// say so, whatever address it named (the inside address, the seen one
// as a server's pasv_address writes it, or none, as in 229). The public
// port is never one the announcer chose: a port of the gateway's own, or
// one the admin's rules forward elsewhere, must stay what it is. In
// active mode through destination NAT, an SNAT mapping makes the
// server's data connection come from the address the client connected
// to.
func planNAT(ports *nat.Ports, tr nat.Translation, ch Channel) (natPlan, RefusalKind, string) {
	peer, inside, seen := tr.Server.Addr(), tr.Client.Addr(), tr.ClientSeen.Addr()
	if ch.Passive {
		peer, inside, seen = tr.Client.Addr(), tr.Server.Addr(), tr.ServerSeen.Addr()
	}
	plan := natPlan{pinhole: rules.Pinhole{Peer: peer, Addr: inside, Port: ch.RespP}}
	if seen != inside {
		src := source.Of(tr.Client.Addr())
		port, err := ports.Pick(seen, src)
		if err != nil {
			lo, hi := ports.Range()
			return natPlan{}, refusedNAT, fmt.Sprintf("no free NAT port on %s in %d-%d: %v", seen, lo, hi, err)
		}
		public := netip.AddrPortFrom(seen, port)
		line, err := parser.AppendRewritten(nil, ch.Command, public)
		if err != nil {
			return natPlan{}, refusedNAT, "cannot rewrite the announcement for the far side of the NAT: " + err.Error()
		}
		ports.Hold(public, src)
		plan.public, plan.line, plan.source = public, line, src
		plan.maps = append(plan.maps, rules.Mapping{Peer: peer, Addr: seen, Port: port, ToAddr: inside, ToPort: ch.RespP})
	}
	if !ch.Passive && tr.ServerSeen.Addr() != tr.Server.Addr() {
		plan.maps = append(plan.maps, rules.Mapping{SNAT: true, Peer: peer, Addr: inside, Port: ch.RespP, ToAddr: tr.ServerSeen.Addr()})
	}
	return plan, 0, ""
}
