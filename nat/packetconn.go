package nat

// PacketConn is the packet path's state of one translated control
// connection: how far the rewrites of each direction have shifted its
// sequence numbers. ftpgate's chains queue every segment of such a
// connection, both ways, once it is known (the kernel here cannot shift
// them for userspace: no CONFIG_NETFILTER_NETLINK_GLUE_CT), and each
// goes on through Pass.
//
// Where the chains queue decides what conntrack sees. Segments from the
// client are queued before conntrack (prerouting, priority -250),
// those from the server after it (postrouting, after source NAT): then
// conntrack sees both directions as the server does, one consistent
// stream with the rewritten lines in it, and its window tracking holds
// without the liberal flag.
//
// On a kernel with the NFQUEUE glue the kernel shifts instead
// (KernelShifts): a rewritten segment goes on with its own numbers, and
// its verdict has the kernel record the change of length in the
// connection's seqadj extension, which shifts every later segment at
// the last hook. adj then only follows what the kernel does, for reading
// acknowledgements.
type PacketConn struct {
	adj    [2]SeqAdjust // 0: from the client; 1: from the server
	kernel bool
}

// KernelShiftedConn is a connection whose sequence numbers the kernel
// shifts (see PacketConn).
func KernelShiftedConn() PacketConn { return PacketConn{kernel: true} }

// noShift is the shift of a connection the kernel shifts: none here.
var noShift SeqAdjust

// Pass appends to dst the segment as it must go on: with payload in
// place of its own (nil: its own), and its numbers shifted by every
// rewrite before it, both ways. A rewrite that changes the length is
// recorded; the same rewrite of a retransmission is not recorded twice.
func (c *PacketConn) Pass(dst []byte, seg Segment, fromServer bool, payload []byte) ([]byte, error) {
	d := 0
	if fromServer {
		d = 1
	}
	// The segment's own shift is the one before its rewrite: record the
	// rewrite once the segment is built.
	own, other := &c.adj[d], &c.adj[1-d]
	if c.kernel {
		own, other = &noShift, &noShift
	}
	out, err := seg.Adjusted(dst, payload, own, other)
	if err == nil && payload != nil {
		c.adj[d].Add(seg.Seq, int32(len(payload)-len(seg.Payload())))
	}
	return out, err
}

// Shifted says whether any rewrite has changed a length and ftpgate
// shifts the connection: until then (and always where the kernel
// shifts) a segment that is not rewritten can go on as it came.
func (c *PacketConn) Shifted() bool {
	return !c.kernel && (len(c.adj[0].corr) > 0 || len(c.adj[1].corr) > 0)
}

// KernelShifts says whether the kernel shifts the connection.
func (c *PacketConn) KernelShifts() bool { return c.kernel }
