package nat

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/ftpgate/ftpgate/internal/source"
)

// PacketPath carries translated control connections through the gateway
// without a proxy: ftpgate's chains queue every segment of theirs, both
// ways (see PacketConn for where), and each goes on rewritten where a
// line must be, and shifted.
//
// It owns the TCP side: which bytes of a segment are new, in order, and
// go to the user (who may rewrite whole lines in them); which are a
// retransmission, rewritten again exactly as before; and which cannot go
// on safely (a segment after a gap, a retransmission overlapping a
// rewrite it does not repeat) and are dropped, for the sender to send
// again. What a line says is the user's business.
type PacketPath struct {
	user PacketUser
	gone func(client, serverSeen netip.AddrPort, shifted bool)
	// OnShift, if set, is told when a connection is first shifted (a
	// rewrite changed a length), before that segment goes on: from then
	// on it cannot go on without ftpgate, and its queueing must outlive
	// this process (rules.Nftables.ShiftTranslated).
	OnShift  func(client, serverSeen netip.AddrPort)
	cfg      PacketPathConfig
	conns    map[connKey]*pathConn
	bySource source.Shares
	nextID   uint64
	stats    PacketStats
	swept    time.Time
	// dirty: a rewrite changed what a state file must hold, which must
	// be written before the segment goes on; stale: a connection came or
	// went, which can wait a little (SaveDue).
	dirty, stale bool
	saved        time.Time
	halfOpen     int // connections whose handshake is not complete
}

// PacketPathConfig bounds what the packet path follows: MaxConns
// connections at once, MaxPerSource of one client (an address, an IPv6
// /64). Beyond, a connection goes on as it comes, its announcements
// untranslated, and the chains stop queueing it.
type PacketPathConfig struct {
	MaxConns, MaxPerSource int
	// Idle: a connection without a segment for this long is forgotten
	// (the kernel's element of it has expired by then); 0: never.
	Idle time.Duration
	// KernelShifts: the kernel shifts the sequence numbers of new IPv4
	// connections (see PacketConn), and the chains queue only their
	// segments that carry data, SYN, FIN or RST (rules.NATConfig): a
	// rewritten segment's verdict is PassKernelShifts. IPv6 ones ftpgate
	// shifts.
	KernelShifts bool
}

// PacketUser is who reads the lines of translated control connections:
// the tracker, through the daemon's loop.
type PacketUser interface {
	// Opened says a translated control connection was seen: client is
	// the client's own address, serverSeen the server as the client
	// addressed it; pickedUp, that it is seen mid-stream (ftpgate
	// started after it, or restarted). follow false: it is not followed
	// (its segments go on as they come, nothing rewritten). kernel: the
	// kernel can shift its sequence numbers (it got the helper stub
	// before its NAT: see Translation.HelperAttached); asked only where
	// the kernel shifts.
	Opened(id uint64, client, serverSeen netip.AddrPort, pickedUp bool) (follow, kernel bool)
	// Bytes are new bytes of one side, in order, at seq (the sender's
	// sequence number); ack is the sender's acknowledgement of the other
	// side, in that side's numbers. out is what goes on instead: data
	// itself, or data with whole lines rewritten. closed says the
	// session is over: the segment is dropped.
	Bytes(id uint64, fromServer bool, seq uint32, data []byte, ack uint32) (out []byte, closed bool)
	// Closed says the connection ended (both FINs, or a reset).
	Closed(id uint64, reason string)
}

// PacketStats count what the packet path did.
type PacketStats struct {
	Segments, Rewritten, Shifted, Dropped, Retransmitted, Unfit, Refused uint64
}

// connKey is a connection's original direction as the client sent it.
type connKey struct{ client, serverSeen netip.AddrPort }

type pathConn struct {
	id       uint64
	key      connKey
	source   netip.Prefix
	shift    PacketConn
	next     [2]uint32 // the next new sequence number, per direction (0: client)
	known    [2]bool
	fin      [2]bool
	rewrites [2][]rewriteRecord // the rewritten segments not yet acknowledged, oldest first
	// sent is what each side sent from sentAt on that its receiver has
	// not acknowledged yet, as it came: a retransmission must match it.
	sent   [2][]byte
	sentAt [2]uint32
	// unchecked: bytes before uncheckedTo were let go from sent without
	// an acknowledgement (KernelShifts): a retransmission of them
	// cannot be checked.
	unchecked   [2]bool
	uncheckedTo [2]uint32
	user        bool // the user follows it
	cut         bool // the user ended it: every segment is dropped
	closed      bool // both sides sent FIN
	pickedUp    bool // seen first mid-stream (ftpgate started after it, or restarted)
	// established: the handshake completed (or it was picked up), and
	// the user follows it; counted: it counts against its client's share.
	established, counted bool
	created              time.Time
	last                 time.Time
}

// rewriteRecord is a segment rewritten: a retransmission of it must be
// rewritten the same.
type rewriteRecord struct {
	seq       uint32
	orig, out []byte
	// restored: read from a state file; whether its receiver has it is
	// not known (where the kernel shifts, bare acknowledgements are not
	// queued), so it holds nothing back (kernelCanShift).
	restored bool
}

// maxRewriteRecords bounds what a connection keeps per direction: a
// control connection has a line or two in flight.
const maxRewriteRecords = 8

// NewPacketPath follows connections within cfg's bounds. gone is told of
// each connection forgotten (ended, cut and idle, or beyond the bounds),
// whose segments ftpgate's chains need not queue any longer.
func NewPacketPath(user PacketUser, cfg PacketPathConfig, gone func(client, serverSeen netip.AddrPort, shifted bool)) *PacketPath {
	return &PacketPath{user: user, gone: gone, cfg: cfg, conns: map[connKey]*pathConn{}, bySource: source.Shares{}}
}

// PacketVerdict is what becomes of a queued segment.
type PacketVerdict uint8

const (
	// PassAsIs: it goes on as it came.
	PassAsIs PacketVerdict = iota
	// PassReplaced: the packet returned goes on in its place.
	PassReplaced
	// DropSegment: it is dropped; its sender sends it again.
	DropSegment
	// PassKernelShifts: the packet returned goes on in its place, and
	// the kernel shifts the connection's later segments by the change of
	// length (capture.Packet.KernelShifts).
	PassKernelShifts
)

// Segment takes one queued packet. fromClient says which of ftpgate's
// chains queued it (the client's before conntrack, the server's after
// source NAT). The packet returned (PassReplaced) is appended to dst.
func (p *PacketPath) Segment(dst, pkt []byte, fromClient bool, now time.Time) ([]byte, PacketVerdict) {
	p.stats.Segments++
	seg, err := ParseSegment(pkt)
	if err != nil {
		p.stats.Dropped++
		return dst, DropSegment
	}
	if why := seg.unfit(fromClient); why != "" {
		// Its receiver, or the gateway itself, would drop it: nothing in
		// it is read.
		p.stats.Unfit++
		return dst, DropSegment
	}
	src, dstAP := endpoints(seg)
	key := connKey{client: src, serverSeen: dstAP}
	d := 0
	if !fromClient {
		key, d = connKey{client: dstAP, serverSeen: src}, 1
	}
	c := p.conns[key]
	if c != nil && (c.closed || c.cut) && seg.Flags&FlagSYN != 0 && d == 1 && c.next[1] != seg.Seq+1 {
		// The 4-tuple again, for a new connection.
		p.end(key, c, "reused")
		c = nil
	}
	if c == nil {
		if c = p.open(key, seg, d, now); c == nil {
			return dst, PassAsIs
		}
	}
	c.last = now
	if !c.established && !p.establish(key, c, seg, d) {
		if c.cut {
			return dst, DropSegment
		}
		return dst, PassAsIs
	}
	if c.cut {
		p.stats.Dropped++
		if seg.Flags&FlagRST != 0 && c.exactRST(seg, d) {
			p.end(key, c, "reset")
		}
		return dst, DropSegment
	}
	out, v := p.segment(dst, c, seg, d)
	switch {
	case v == DropSegment:
	case seg.Flags&FlagRST != 0 && c.exactRST(seg, d):
		p.end(key, c, "reset")
	case c.fin[0] && c.fin[1] && !c.closed:
		// The last acknowledgements still need their shift: the
		// connection is forgotten after a linger (Sweep).
		c.closed = true
		if c.user {
			c.user = false
			p.user.Closed(c.id, "closed")
		}
	}
	return out, v
}

// open starts following a connection: from its handshake's SYN-ACK, or
// (picked up: ftpgate started after it) its first data. Until the client
// acknowledges the SYN-ACK it is half-open: a spoofed SYN gets that far
// and no further, and costs a place only for handshakeTimeout.
func (p *PacketPath) open(key connKey, seg Segment, d int, now time.Time) *pathConn {
	synAck := seg.Flags&(FlagSYN|FlagACK) == FlagSYN|FlagACK && d == 1
	if seg.Flags&FlagRST != 0 || (!synAck && len(seg.Payload()) == 0) || (seg.Flags&FlagSYN != 0 && !synAck) {
		return nil
	}
	if len(p.conns) >= p.cfg.MaxConns || (synAck && p.halfOpen >= p.maxHalfOpen()) {
		p.stats.Refused++
		p.gone(key.client, key.serverSeen, false)
		return nil
	}
	p.nextID++
	c := &pathConn{id: p.nextID, key: key, source: sourceOf(key.client), created: now}
	if p.cfg.KernelShifts && key.client.Addr().Is4() {
		// IPv4 only: the kernel records an IPv6 correction at a wrong
		// place (see rules.NATConfig.KernelShifts).
		c.shift = KernelShiftedConn()
	}
	p.conns[key] = c
	if synAck {
		p.halfOpen++
		c.learn(seg, d)
	} else {
		c.pickedUp = true
	}
	return c
}

// maxHalfOpen bounds the connections whose handshake is not complete.
func (p *PacketPath) maxHalfOpen() int { return max(p.cfg.MaxConns/4, 1) }

// establish makes a half-open connection followed once the client
// acknowledges the server's SYN (or, picked up, at once), under the
// client's share, and tells the user. false: not (yet) followed.
//
// Where the kernel shifts, a bare acknowledgement is not queued: the
// server's first data, acknowledging the client's SYN, is what shows
// the handshake complete (a server sends only on an accepted
// connection, and a SYN from a forged source never gets that far).
func (p *PacketPath) establish(key connKey, c *pathConn, seg Segment, d int) bool {
	clientAcked := d == 0 && c.known[1] && seg.Ack == c.next[1]
	serverSent := c.shift.KernelShifts() && d == 1 && len(seg.Payload()) > 0 && seg.Flags&FlagSYN == 0 && c.known[0] && seg.Ack == c.next[0]
	if !c.pickedUp && (seg.Flags&FlagACK == 0 || !(clientAcked || serverSent)) {
		return false
	}
	if !c.pickedUp {
		p.halfOpen--
	}
	c.established = true
	if p.bySource[c.source] >= p.cfg.MaxPerSource {
		p.stats.Refused++
		p.end(key, c, "share taken")
		return false
	}
	p.bySource.Add(c.source)
	c.counted = true
	p.stale = true // a new connection for the state file
	var kernel bool
	c.user, kernel = p.user.Opened(c.id, key.client, key.serverSeen, c.pickedUp)
	if c.user && c.shift.KernelShifts() && !kernel {
		// Without the stub before its NAT (a port forward from a port
		// that is not a control port, say) the kernel cannot shift it:
		// ftpgate does, and its segments must all be queued, the
		// client's before conntrack, as for a connection ftpgate has
		// shifted (OnShift moves it there).
		c.shift.kernel = false
		if p.OnShift != nil {
			p.OnShift(key.client, key.serverSeen)
		}
	}
	if !c.user {
		if c.shift.Shifted() {
			c.cut = true // restored, and its session cannot be had: cut
			return true
		}
		p.stats.Refused++
		p.end(key, c, "not followed")
		return false
	}
	return true
}

// exactRST says whether a reset is at the sequence number its receiver
// expects (RFC 5961): only such a one ends the connection here. Any
// other goes on, for the receiver to answer with a challenge ACK, and
// the connection stays followed: a blind reset must not cut it.
func (c *pathConn) exactRST(seg Segment, d int) bool {
	return !c.known[d] || seg.Seq == c.next[d]
}

// segment decides one segment of c, from side d.
func (p *PacketPath) segment(dst []byte, c *pathConn, seg Segment, d int) ([]byte, PacketVerdict) {
	c.learn(seg, d)
	data := seg.Payload()
	var payload []byte // nil: the segment's own
	if len(data) > 0 && seg.Flags&FlagSYN == 0 && c.known[d] {
		// Data in an established connection comes with an
		// acknowledgement, of no more than the other side sent: a
		// segment without one, or acknowledging the future, is forged or
		// broken, and neither its receiver nor conntrack would take it.
		if seg.Flags&FlagACK == 0 || (c.known[1-d] && seqAfter(c.ackOf(seg, d), c.next[1-d])) {
			p.stats.Dropped++
			return dst, DropSegment
		}
	}
	if seg.Flags&FlagACK != 0 && c.known[1-d] && !seqAfter(c.ackOf(seg, d), c.next[1-d]) {
		c.noteAck(1-d, c.ackOf(seg, d))
	}
	trimmed := false
	if c.shift.KernelShifts() && len(data) > 0 && seg.Flags&FlagSYN == 0 && c.known[d] {
		keep, ok := c.kernelCanShift(seg, d, data)
		if !ok || (keep < len(data) && seg.Flags&FlagFIN != 0) {
			p.stats.Dropped++
			return dst, DropSegment
		}
		data, trimmed = data[:keep], keep < len(data)
	}
	if len(data) > 0 && seg.Flags&FlagSYN == 0 && c.known[d] {
		start, end := seg.Seq, seg.Seq+uint32(len(data))
		if r := c.rewriteOf(d, start, data); r != nil {
			// A rewritten segment again: rewritten the same, whatever
			// ftpgate thinks of where the stream is (a restart may
			// have lost that).
			p.stats.Retransmitted++
			payload = r.out
			if !seqAfter(c.next[d], end) {
				c.next[d] = end
			}
		} else {
			switch {
			case seqAfter(start, c.next[d]):
				// After a gap: its line may begin in what is missing.
				p.stats.Dropped++
				return dst, DropSegment
			case !seqAfter(end, c.next[d]):
				// Old bytes only: a retransmission, which must carry the
				// bytes that went before (else the receiver and ftpgate
				// would read different streams), with the rewrites in
				// them done again.
				p.stats.Retransmitted++
				var ok bool
				if payload, ok = c.again(d, start, data); !ok {
					p.stats.Dropped++
					return dst, DropSegment
				}
			default:
				var v PacketVerdict
				if payload, v = p.newBytes(c, seg, d, data); v == DropSegment {
					return dst, v
				}
			}
		}
	}
	if seg.Flags&FlagFIN != 0 && seg.Seq+uint32(len(data)) == c.next[d] {
		c.fin[d] = true
		c.next[d]++
	}
	if payload == nil && !c.shift.Shifted() {
		return dst, PassAsIs
	}
	if c.shift.KernelShifts() {
		if trimmed {
			// Its length differs by the bytes cut, not by a rewrite:
			// neither the kernel (no NFQA_CT) nor ftpgate's account of
			// what the kernel does records it.
			if payload == nil {
				payload = data
			}
			out, err := seg.Adjusted(dst, payload, &noShift, &noShift)
			if err != nil {
				p.stats.Dropped++
				return dst, DropSegment
			}
			return out, PassReplaced
		}
		out, err := c.shift.Pass(dst, seg, d == 1, payload)
		if err != nil {
			p.stats.Dropped++
			return dst, DropSegment
		}
		return out, PassKernelShifts
	}
	wasShifted := c.shift.Shifted()
	out, err := c.shift.Pass(dst, seg, d == 1, payload)
	if err != nil {
		p.stats.Dropped++
		return dst, DropSegment
	}
	if !wasShifted && c.shift.Shifted() && p.OnShift != nil {
		p.OnShift(c.key.client, c.key.serverSeen)
	}
	p.stats.Shifted++
	return out, PassReplaced
}

// kernelCanShift says how much of a segment of side d can go on where
// the kernel shifts: all of it (len(data)), its old bytes only, or
// nothing (false). The kernel keeps one correction per direction (the
// last; the one before it only as the shift of what precedes it): a
// segment reaching back to the one but last correction would be shifted
// wrongly, and its receiver would read it elsewhere in the stream than
// ftpgate did. So while a rewrite of d that changed a length is not
// acknowledged, no new bytes of d go on (their sender sends them again
// once the receiver has the rewrite; a retransmission merged with new
// bytes goes on cut to its old ones), which keeps a second correction
// from coming while the first can still be sent again; and a copy of
// bytes from before the last correction but one (acknowledged by then)
// is dropped. A rewrite carried over a restart holds nothing back: the
// acknowledgement that would free it may have gone by, bare, unseen.
func (c *pathConn) kernelCanShift(seg Segment, d int, data []byte) (int, bool) {
	if corr := c.shift.adj[d].corr; len(corr) >= 2 && !seqAfter(seg.Seq, corr[len(corr)-2].pos) {
		return 0, false
	}
	old := int(c.next[d] - seg.Seq)
	if old >= len(data) || seqAfter(seg.Seq, c.next[d]) {
		return len(data), true // a retransmission, or after a gap: checked as such
	}
	for _, r := range c.rewrites[d] {
		if len(r.out) != len(r.orig) && !r.restored {
			return old, old > 0
		}
	}
	return len(data), true
}

// newBytes hands the new bytes of a segment (maybe after old ones: a
// retransmission the sender merged with what followed) to the user, and
// returns the payload to send instead, if it changed.
func (p *PacketPath) newBytes(c *pathConn, seg Segment, d int, data []byte) ([]byte, PacketVerdict) {
	start, end := seg.Seq, seg.Seq+uint32(len(data))
	old := c.next[d] - start
	var before []byte // the old part, as it goes on
	if old > 0 {
		var ok bool
		if before, ok = c.again(d, start, data[:old]); !ok {
			p.stats.Dropped++
			return nil, DropSegment
		}
		if before == nil {
			before = data[:old]
		}
	}
	if len(c.sent[d])+len(data)-int(old) > maxUnacked {
		if !c.shift.KernelShifts() {
			// More than a control connection keeps unacknowledged: it
			// waits for the receiver to catch up.
			p.stats.Dropped++
			return nil, DropSegment
		}
		// Where the kernel shifts, the receiver's bare acknowledgements
		// are not queued: what it has is known only from its own data,
		// which may not come before this reply is whole (a long STAT).
		// The oldest bytes kept go; a retransmission reaching back to
		// them can no longer be checked, and is dropped (again).
		n := min(len(c.sent[d])+len(data)-int(old)-maxUnacked, len(c.sent[d]))
		c.sent[d] = append(c.sent[d][:0], c.sent[d][n:]...)
		c.sentAt[d] += uint32(n)
		c.unchecked[d], c.uncheckedTo[d] = true, c.sentAt[d]
	}
	out := data[old:]
	if c.user {
		var closed bool
		out, closed = p.user.Bytes(c.id, d == 1, c.next[d], data[old:], c.ackOf(seg, d))
		if closed {
			c.user, c.cut = false, true
			p.stats.Dropped++
			return nil, DropSegment
		}
	}
	if len(c.sent[d]) == 0 {
		c.sentAt[d] = c.next[d]
	}
	c.sent[d] = append(c.sent[d], data[old:]...)
	c.next[d] = end
	if bytes.Equal(out, data[old:]) && bytes.Equal(before, data[:old]) {
		return nil, PassReplaced
	}
	payload := append(append(make([]byte, 0, len(before)+len(out)), before...), out...)
	if bytes.Equal(out, data[old:]) {
		return payload, PassReplaced // only the old part's rewrites, done again
	}
	c.remember(d, seg.Seq, data, payload)
	p.stats.Rewritten++
	p.dirty = true
	return payload, PassReplaced
}

// learn takes the initial sequence numbers from the handshake; a
// connection picked up later starts at the first segment seen.
func (c *pathConn) learn(seg Segment, d int) {
	switch {
	case seg.Flags&FlagSYN != 0 && !c.known[d]:
		c.next[d], c.known[d] = seg.Seq+1, true
		if d == 1 && seg.Flags&FlagACK != 0 && !c.known[0] {
			c.next[0], c.known[0] = seg.Ack, true
		}
	case !c.known[d]:
		c.next[d], c.known[d] = seg.Seq, true
	}
}

// ackOf is the segment's acknowledgement in the other side's own
// numbers.
func (c *pathConn) ackOf(seg Segment, d int) uint32 {
	return seg.Ack - uint32(c.shift.adj[1-d].Ack(seg.Ack))
}

// maxUnacked bounds what one side of a connection may have sent and not
// had acknowledged: what ftpgate keeps of it to check retransmissions.
const maxUnacked = 16 << 10

// noteAck takes an acknowledgement of side d's bytes up to ack (in d's
// numbers): what its receiver has need not be kept.
func (c *pathConn) noteAck(d int, ack uint32) {
	if c.unchecked[d] && !seqAfter(c.uncheckedTo[d], ack) {
		c.unchecked[d] = false
	}
	if n := int(ack - c.sentAt[d]); len(c.sent[d]) > 0 && n > 0 {
		if n >= len(c.sent[d]) {
			c.sent[d] = c.sent[d][:0]
		} else {
			c.sent[d] = append(c.sent[d][:0], c.sent[d][n:]...)
		}
		c.sentAt[d] = ack
	}
	kept := c.rewrites[d][:0]
	for _, r := range c.rewrites[d] {
		if seqAfter(r.seq+uint32(len(r.orig)), ack) {
			kept = append(kept, r)
		}
	}
	c.rewrites[d] = kept
}

// again is a retransmission of side d's bytes (data, at start) as it
// must go on: nil if as it came; with the rewrites in it done again;
// false if it cannot go on: its bytes differ from those that went
// before (still unacknowledged, so known), or it holds part of a
// rewritten segment but not all of it.
func (c *pathConn) again(d int, start uint32, data []byte) ([]byte, bool) {
	end := start + uint32(len(data))
	if c.unchecked[d] && seqAfter(c.uncheckedTo[d], start) {
		return nil, false
	}
	// Compare what overlaps the unacknowledged bytes kept.
	if len(c.sent[d]) > 0 {
		from, to := start, end
		if seqAfter(c.sentAt[d], from) {
			from = c.sentAt[d]
		}
		if sentEnd := c.sentAt[d] + uint32(len(c.sent[d])); seqAfter(to, sentEnd) {
			to = sentEnd
		}
		if seqAfter(to, from) && !bytes.Equal(data[from-start:to-start], c.sent[d][from-c.sentAt[d]:to-c.sentAt[d]]) {
			return nil, false
		}
	}
	var out []byte
	at := 0
	for _, r := range c.rewrites[d] {
		rend := r.seq + uint32(len(r.orig))
		if !seqAfter(end, r.seq) || !seqAfter(rend, start) {
			continue // not in this one
		}
		if seqAfter(start, r.seq) || seqAfter(rend, end) || !bytes.Equal(data[r.seq-start:rend-start], r.orig) {
			return nil, false
		}
		out = append(append(out, data[at:r.seq-start]...), r.out...)
		at = int(rend - start)
	}
	if out == nil {
		return nil, true
	}
	return append(out, data[at:]...), true
}

func (c *pathConn) rewriteOf(d int, seq uint32, data []byte) *rewriteRecord {
	for i := range c.rewrites[d] {
		if r := &c.rewrites[d][i]; r.seq == seq && bytes.Equal(r.orig, data) {
			return r
		}
	}
	return nil
}

func (c *pathConn) remember(d int, seq uint32, orig, out []byte) {
	if len(c.rewrites[d]) == maxRewriteRecords {
		c.rewrites[d] = append(c.rewrites[d][:0], c.rewrites[d][1:]...)
	}
	c.rewrites[d] = append(c.rewrites[d], rewriteRecord{seq: seq, orig: bytes.Clone(orig), out: bytes.Clone(out)})
}

// end forgets a connection and tells the user.
func (p *PacketPath) end(key connKey, c *pathConn, reason string) {
	if c.established {
		p.stale = true
	}
	delete(p.conns, key)
	if c.counted {
		p.bySource.Remove(c.source)
	}
	if !c.established && !c.pickedUp {
		p.halfOpen--
	}
	p.gone(key.client, key.serverSeen, c.shift.Shifted())
	if c.user {
		p.user.Closed(c.id, reason)
	}
}

// Forget cuts the connection of session id, which the user ended itself
// (a timeout, a reload, a session it refused): its later segments are
// dropped, as the control proxy closed such a connection. Without the
// shift the two ends would no longer agree on the stream.
func (p *PacketPath) Forget(id uint64) {
	for _, c := range p.conns {
		if c.id == id {
			c.user, c.cut = false, true
			return
		}
	}
}

// handshakeTimeout is how long a connection may stay half-open.
const handshakeTimeout = 30 * time.Second

// linger is how long a cut or closed connection is still handled after
// its last segment, before it is forgotten: a cut one's segments are
// dropped, a closed one's last acknowledgements shifted.
const linger = 2 * time.Minute

// Sweep forgets cut and closed connections idle for linger, and any idle
// for cfg.Idle (one restored from a state file that never came back);
// it looks at most once a second.
func (p *PacketPath) Sweep(now time.Time) {
	if now.Sub(p.swept) < time.Second {
		return
	}
	p.swept = now
	for k, c := range p.conns {
		switch {
		case (c.cut || c.closed) && now.Sub(c.last) > linger:
			p.end(k, c, "forgotten")
		case !c.established && now.Sub(c.created) > handshakeTimeout:
			p.end(k, c, "handshake not completed")
		case p.cfg.Idle > 0 && now.Sub(c.last) > p.cfg.Idle:
			p.end(k, c, "idle")
		}
	}
}

// Stop says, as ftpgate stops, how many connections cannot go on
// without it (shifted): their table must stay. Every connection followed
// is in the state file (Snapshot) for the next ftpgate; those never
// shifted go on meanwhile as they come.
func (p *PacketPath) Stop() (kept int) {
	for _, c := range p.conns {
		if c.shift.Shifted() && !c.cut && !c.closed {
			kept++
		}
	}
	return kept
}

// Len is how many connections are followed.
func (p *PacketPath) Len() int { return len(p.conns) }

// Stats are the counts so far.
func (p *PacketPath) Stats() PacketStats { return p.stats }

// sourceOf is the share a client counts against.
func sourceOf(client netip.AddrPort) netip.Prefix { return source.Of(client.Addr()) }

// endpoints are the segment's source and destination.
func endpoints(s Segment) (src, dst netip.AddrPort) {
	b, tcp := s.pkt, s.pkt[s.tcpAt:]
	sp, dp := binary.BigEndian.Uint16(tcp[0:]), binary.BigEndian.Uint16(tcp[2:])
	if s.v6 {
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])), sp), netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[24:40])), dp)
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[12:16])), sp), netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[16:20])), dp)
}
