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
	user     PacketUser
	gone     func(client, serverSeen netip.AddrPort)
	cfg      PacketPathConfig
	conns    map[connKey]*pathConn
	bySource source.Shares
	nextID   uint64
	stats    PacketStats
	swept    time.Time
	dirty    bool // a state file's content changed (Snapshot)
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
}

// PacketUser is who reads the lines of translated control connections:
// the tracker, through the daemon's loop.
type PacketUser interface {
	// Opened says a translated control connection was seen: client is
	// the client's own address, serverSeen the server as the client
	// addressed it; pickedUp, that it is seen mid-stream (ftpgate
	// started after it, or restarted). false: it is not followed (its
	// segments go on as they come, nothing rewritten).
	Opened(id uint64, client, serverSeen netip.AddrPort, pickedUp bool) bool
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
	Segments, Rewritten, Shifted, Dropped, Retransmitted, BadChecksum, Refused uint64
}

// connKey is a connection's original direction as the client sent it.
type connKey struct{ client, serverSeen netip.AddrPort }

type pathConn struct {
	id       uint64
	source   netip.Prefix
	shift    PacketConn
	next     [2]uint32 // the next new sequence number, per direction (0: client)
	known    [2]bool
	fin      [2]bool
	rewrites [2][]rewriteRecord // the last rewritten segments, oldest first
	user     bool               // the user follows it
	cut      bool               // the user ended it: every segment is dropped
	closed   bool               // both sides sent FIN
	restored bool               // from a state file: its session is picked up
	last     time.Time
}

// rewriteRecord is a segment rewritten: a retransmission of it must be
// rewritten the same.
type rewriteRecord struct {
	seq       uint32
	orig, out []byte
}

// maxRewriteRecords bounds what a connection keeps per direction: a
// control connection has a line or two in flight.
const maxRewriteRecords = 8

// NewPacketPath follows connections within cfg's bounds. gone is told of
// each connection forgotten (ended, cut and idle, or beyond the bounds),
// whose segments ftpgate's chains need not queue any longer.
func NewPacketPath(user PacketUser, cfg PacketPathConfig, gone func(client, serverSeen netip.AddrPort)) *PacketPath {
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
	if !seg.ChecksumOK() {
		// Its receiver would drop it: nothing in it is read.
		p.stats.BadChecksum++
		return dst, DropSegment
	}
	src, dstAP := endpoints(seg)
	key := connKey{client: src, serverSeen: dstAP}
	d := 0
	if !fromClient {
		key, d = connKey{client: dstAP, serverSeen: src}, 1
	}
	c := p.conns[key]
	if c == nil {
		// A connection is followed from its handshake's SYN-ACK, or
		// (picked up: ftpgate started after it) its first data.
		if seg.Flags&FlagRST != 0 || (seg.Flags&FlagSYN == 0 && len(seg.Payload()) == 0) {
			return dst, PassAsIs
		}
		src := sourceOf(key.client)
		if len(p.conns) >= p.cfg.MaxConns || p.bySource[src] >= p.cfg.MaxPerSource {
			p.stats.Refused++
			p.gone(key.client, key.serverSeen)
			return dst, PassAsIs
		}
		p.nextID++
		c = &pathConn{id: p.nextID, source: src}
		p.conns[key] = c
		p.bySource.Add(src)
		if c.user = p.user.Opened(c.id, key.client, key.serverSeen, seg.Flags&FlagSYN == 0); !c.user {
			p.stats.Refused++
			p.end(key, c, "not followed")
			return dst, PassAsIs
		}
	}
	c.last = now
	if c.restored {
		// Back from a state file: its session starts again here.
		c.restored = false
		if c.user = p.user.Opened(c.id, key.client, key.serverSeen, true); !c.user {
			c.cut = true
		}
	}
	if c.cut {
		p.stats.Dropped++
		if seg.Flags&FlagRST != 0 {
			p.end(key, c, "reset")
		}
		return dst, DropSegment
	}
	out, v := p.segment(dst, c, seg, d)
	switch {
	case seg.Flags&FlagRST != 0:
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

// segment decides one segment of c, from side d.
func (p *PacketPath) segment(dst []byte, c *pathConn, seg Segment, d int) ([]byte, PacketVerdict) {
	c.learn(seg, d)
	data := seg.Payload()
	var payload []byte // nil: the segment's own
	if len(data) > 0 && c.known[d] {
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
				// Old bytes only: a retransmission.
				p.stats.Retransmitted++
				if c.overlapsRewrite(d, start, end) {
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
	out, err := c.shift.Pass(dst, seg, d == 1, payload)
	if err != nil {
		p.stats.Dropped++
		return dst, DropSegment
	}
	p.stats.Shifted++
	return out, PassReplaced
}

// newBytes hands the new bytes of a segment (maybe after old ones: a
// retransmission the sender merged with what followed) to the user, and
// returns the payload to send instead, if it changed.
func (p *PacketPath) newBytes(c *pathConn, seg Segment, d int, data []byte) ([]byte, PacketVerdict) {
	start, end := seg.Seq, seg.Seq+uint32(len(data))
	old := c.next[d] - start
	if old > 0 && c.overlapsRewrite(d, start, c.next[d]) {
		p.stats.Dropped++
		return nil, DropSegment
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
	c.next[d] = end
	if bytes.Equal(out, data[old:]) {
		return nil, PassReplaced
	}
	payload := append(append(make([]byte, 0, int(old)+len(out)), data[:old]...), out...)
	c.remember(d, seg.Seq, data, payload)
	p.stats.Rewritten++
	p.dirty = true
	return payload, PassReplaced
}

// learn takes the initial sequence numbers from the handshake; a
// connection picked up later starts at the first segment seen.
func (c *pathConn) learn(seg Segment, d int) {
	switch {
	case seg.Flags&FlagSYN != 0:
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

func (c *pathConn) rewriteOf(d int, seq uint32, data []byte) *rewriteRecord {
	for i := range c.rewrites[d] {
		if r := &c.rewrites[d][i]; r.seq == seq && bytes.Equal(r.orig, data) {
			return r
		}
	}
	return nil
}

// overlapsRewrite says whether bytes [start, end) of side d hold some of
// a rewritten segment's.
func (c *pathConn) overlapsRewrite(d int, start, end uint32) bool {
	for _, r := range c.rewrites[d] {
		rend := r.seq + uint32(len(r.orig))
		if seqAfter(end, r.seq) && seqAfter(rend, start) {
			return true
		}
	}
	// Older rewrites than those remembered are long acknowledged: a
	// correction before the first remembered one is older still.
	return false
}

func (c *pathConn) remember(d int, seq uint32, orig, out []byte) {
	if len(c.rewrites[d]) == maxRewriteRecords {
		c.rewrites[d] = append(c.rewrites[d][:0], c.rewrites[d][1:]...)
	}
	c.rewrites[d] = append(c.rewrites[d], rewriteRecord{seq: seq, orig: bytes.Clone(orig), out: bytes.Clone(out)})
}

// end forgets a connection and tells the user.
func (p *PacketPath) end(key connKey, c *pathConn, reason string) {
	if c.shift.Shifted() {
		p.dirty = true
	}
	delete(p.conns, key)
	p.bySource.Remove(c.source)
	p.gone(key.client, key.serverSeen)
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
		case p.cfg.Idle > 0 && now.Sub(c.last) > p.cfg.Idle:
			p.end(k, c, "idle")
		}
	}
}

// Stop gives up, as ftpgate stops, every connection that can go on
// without it (nothing shifted: gone is told, and the chains stop
// queueing it), and returns how many cannot: those are in the state
// file, and their segments wait in the kernel for the next ftpgate.
func (p *PacketPath) Stop() (kept int) {
	for k, c := range p.conns {
		if c.shift.Shifted() && !c.cut && !c.closed {
			kept++
			continue
		}
		delete(p.conns, k)
		p.bySource.Remove(c.source)
		p.gone(k.client, k.serverSeen)
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
