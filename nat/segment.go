package nat

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/ftpgate/ftpgate/internal/inetsum"
)

// Segment is one TCP segment of a translated control connection as the
// kernel queued it, from its IP header: what the packet path rewrites
// before the segment goes on.
type Segment struct {
	pkt    []byte
	v6     bool
	tcpAt  int // where the TCP header starts (IP header and extension headers before it)
	dataAt int // where the payload starts
	end    int // where the IP datagram ends (a queued copy may carry nothing after it)
	// Seq and Ack are the segment's sequence and acknowledgement
	// numbers, as the sender wrote them.
	Seq, Ack uint32
	// Flags are the TCP flags (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08,
	// ACK 0x10).
	Flags byte
}

// TCP flags the packet path looks at.
const (
	FlagFIN = 0x01
	FlagSYN = 0x02
	FlagRST = 0x04
	FlagACK = 0x10
)

// ErrNotRewritable is a segment the packet path cannot rewrite: not TCP
// over IPv4 or IPv6, a fragment, cut short, or under an IPv6
// authentication or routing header that a new payload would break.
var ErrNotRewritable = errors.New("segment cannot be rewritten")

// ParseSegment reads the headers of a queued packet. The packet must be
// whole (queued with its payload): the rewritten one is built from it.
func ParseSegment(pkt []byte) (Segment, error) {
	s := Segment{pkt: pkt}
	if len(pkt) < 1 {
		return s, fmt.Errorf("%w: empty packet", ErrNotRewritable)
	}
	var err error
	switch pkt[0] >> 4 {
	case 4:
		err = s.parseIPv4()
	case 6:
		s.v6 = true
		err = s.parseIPv6()
	default:
		err = fmt.Errorf("%w: IP version %d", ErrNotRewritable, pkt[0]>>4)
	}
	if err != nil {
		return s, err
	}
	tcp := pkt[s.tcpAt:s.end]
	if len(tcp) < 20 {
		return s, fmt.Errorf("%w: TCP header cut short", ErrNotRewritable)
	}
	off := int(tcp[12]>>4) * 4
	if off < 20 || off > len(tcp) {
		return s, fmt.Errorf("%w: TCP data offset %d", ErrNotRewritable, off)
	}
	s.dataAt = s.tcpAt + off
	s.Seq = binary.BigEndian.Uint32(tcp[4:])
	s.Ack = binary.BigEndian.Uint32(tcp[8:])
	s.Flags = tcp[13]
	return s, nil
}

func (s *Segment) parseIPv4() error {
	b := s.pkt
	if len(b) < 20 {
		return fmt.Errorf("%w: IPv4 header cut short", ErrNotRewritable)
	}
	ihl, total := int(b[0]&0x0f)*4, int(binary.BigEndian.Uint16(b[2:]))
	switch {
	case ihl < 20 || total < ihl || total > len(b):
		return fmt.Errorf("%w: IPv4 lengths (header %d, total %d, have %d)", ErrNotRewritable, ihl, total, len(b))
	case b[9] != 6:
		return fmt.Errorf("%w: IPv4 protocol %d", ErrNotRewritable, b[9])
	case binary.BigEndian.Uint16(b[6:])&0x3fff != 0:
		return fmt.Errorf("%w: an IPv4 fragment", ErrNotRewritable)
	}
	s.tcpAt, s.end = ihl, total
	return nil
}

// IPv6 extension headers the packet path walks over.
const (
	ip6HopByHop = 0
	ip6Routing  = 43
	ip6DestOpts = 60
)

func (s *Segment) parseIPv6() error {
	b := s.pkt
	if len(b) < 40 {
		return fmt.Errorf("%w: IPv6 header cut short", ErrNotRewritable)
	}
	plen := int(binary.BigEndian.Uint16(b[4:]))
	if plen == 0 || 40+plen > len(b) {
		return fmt.Errorf("%w: IPv6 payload length %d, have %d", ErrNotRewritable, plen, len(b)-40)
	}
	s.end = 40 + plen
	next, at := b[6], 40
	for range 8 {
		switch next {
		case 6:
			s.tcpAt = at
			return nil
		case ip6HopByHop, ip6DestOpts, ip6Routing:
			if s.end-at < 8 {
				return fmt.Errorf("%w: IPv6 extension header cut short", ErrNotRewritable)
			}
			// With segments left, the TCP checksum covers the final
			// destination, which is not in the header.
			if next == ip6Routing && b[at+3] != 0 {
				return fmt.Errorf("%w: an IPv6 routing header with segments left", ErrNotRewritable)
			}
			n := (int(b[at+1]) + 1) * 8
			if n > s.end-at {
				return fmt.Errorf("%w: IPv6 extension header cut short", ErrNotRewritable)
			}
			next, at = b[at], at+n
		default:
			return fmt.Errorf("%w: IPv6 next header %d", ErrNotRewritable, next)
		}
	}
	return fmt.Errorf("%w: too many IPv6 extension headers", ErrNotRewritable)
}

// ChecksumOK says whether the TCP checksum is right. Queued packets
// carry a whole one: NFQUEUE fills in a checksum left to the hardware
// before it copies the packet (without NFQA_CFG_F_GSO, which the packet
// path does not ask for), so the pseudo-header sum in its place is
// wrong here.
func (s Segment) ChecksumOK() bool {
	tcp := s.pkt[s.tcpAt:s.end]
	return inetsum.Fold(inetsum.Sum(tcp, s.pseudo(s.pkt, len(tcp)))) == 0xffff
}

// unfit says why a segment must not be read, or "": a wrong checksum
// (its receiver drops it), and from the client's side, queued before
// routing and conntrack, what the gateway itself would drop or its
// receiver handle apart: a TTL or hop limit that ends here, IPv4
// options (a source route, among others).
func (s Segment) unfit(fromClient bool) string {
	switch {
	case !s.ChecksumOK():
		return "wrong TCP checksum"
	case !fromClient:
		return ""
	case s.v6 && s.pkt[7] <= 1:
		return "hop limit ends at the gateway"
	case !s.v6 && s.pkt[8] <= 1:
		return "TTL ends at the gateway"
	case !s.v6 && s.tcpAt > 20:
		return "IPv4 options"
	}
	return ""
}

// Payload is the segment's data.
func (s Segment) Payload() []byte { return s.pkt[s.dataAt:s.end] }

// Adjusted is the packet with payload in place of the segment's own
// (nil: its own), its sequence number shifted by own.Seq, its
// acknowledgement and SACK edges shifted back by other.Ack, and its
// lengths and checksums made right. It is appended to dst.
//
// Every segment of a translated connection goes through this once a
// rewrite has changed a length, both ways: the receiver must see one
// stream with the rewritten lines in it, and the sender acknowledgements
// of the bytes it sent.
func (s Segment) Adjusted(dst, payload []byte, own, other *SeqAdjust) ([]byte, error) {
	if payload == nil {
		payload = s.Payload()
	}
	size := s.dataAt + len(payload)
	if size-s.netHeaderLen() > 0xffff {
		return dst, fmt.Errorf("%w: %d bytes would not fit in one IP datagram", ErrNotRewritable, size)
	}
	start := len(dst)
	dst = append(dst, s.pkt[:s.dataAt]...)
	dst = append(dst, payload...)
	p := dst[start:]
	tcp := p[s.tcpAt:]
	binary.BigEndian.PutUint32(tcp[4:], s.Seq+uint32(own.Seq(s.Seq)))
	if s.Flags&FlagACK != 0 {
		binary.BigEndian.PutUint32(tcp[8:], s.Ack-uint32(other.Ack(s.Ack)))
		adjustSACK(tcp[20:s.dataAt-s.tcpAt], other)
	}
	if s.v6 {
		binary.BigEndian.PutUint16(p[4:], uint16(size-40))
	} else {
		binary.BigEndian.PutUint16(p[2:], uint16(size))
		p[10], p[11] = 0, 0
		binary.BigEndian.PutUint16(p[10:], ^inetsum.Fold(inetsum.Sum(p[:s.tcpAt], 0)))
	}
	tcp[16], tcp[17] = 0, 0
	binary.BigEndian.PutUint16(tcp[16:], ^inetsum.Fold(inetsum.Sum(tcp, s.pseudo(p, len(tcp)))))
	return dst, nil
}

// netHeaderLen is what of the IP header its length field leaves out.
func (s Segment) netHeaderLen() int {
	if s.v6 {
		return 40
	}
	return 0
}

// pseudo is the sum of the TCP pseudo-header for a segment of n bytes.
func (s Segment) pseudo(p []byte, n int) uint32 {
	if s.v6 {
		return inetsum.Pseudo(p[8:40], 6, n)
	}
	return inetsum.Pseudo(p[12:20], 6, n)
}

// adjustSACK shifts the edges of a SACK option back as other.Ack does
// an acknowledgement (the kernel's nf_ct_sack_adjust).
func adjustSACK(opts []byte, other *SeqAdjust) {
	for len(opts) > 0 {
		switch opts[0] {
		case 0: // end of options
			return
		case 1: // no-op
			opts = opts[1:]
			continue
		}
		if len(opts) < 2 || opts[1] < 2 || int(opts[1]) > len(opts) {
			return
		}
		if opts[0] == 5 { // SACK: pairs of edges
			for b := opts[2:opts[1]]; len(b) >= 8; b = b[8:] {
				for _, e := range [][]byte{b[0:4], b[4:8]} {
					v := binary.BigEndian.Uint32(e)
					binary.BigEndian.PutUint32(e, v-uint32(other.Ack(v)))
				}
			}
		}
		opts = opts[opts[1]:]
	}
}
