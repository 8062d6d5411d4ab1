package conntrack

import (
	"encoding/binary"
	"github.com/ftpgate/ftpgate/internal/inetsum"
	"net/netip"

	"github.com/gopacket/gopacket/layers"

	"github.com/ftpgate/ftpgate/rules"
)

// rawIP is the link type of what the kernel hands over from the IP
// header on (a held SYN, a report): the version nibble tells IPv4 from
// IPv6. Sources name it capture.rawIP.
const rawIP = layers.LinkTypeRaw

// TCP header flags.
const (
	flagFIN = 0x01
	flagSYN = 0x02
	flagRST = 0x04
	flagPSH = 0x08
	flagACK = 0x10
)

// segment is one TCP segment decoded from a captured packet. payload
// points into the captured packet.
type segment struct {
	src, dst netip.AddrPort
	seq, ack uint32
	flags    uint8
	window   uint16
	wscale   int8 // window scale option of a SYN, -1 if absent
	payload  []byte
}

func (s *segment) has(f uint8) bool { return s.flags&f != 0 }

// decodeStatus says why a packet yielded no segment.
type decodeStatus uint8

const (
	decodedTCP     decodeStatus = iota
	decodeNotTCP                // IP, but not TCP (or no IP at all)
	decodeBroken                // truncated or malformed headers, unknown link type
	decodeFragment              // an IP fragment
	decodeBadSum                // IP or TCP checksum wrong
)

// decode reads the TCP segment of a captured packet of the given link
// type. It allocates nothing and never panics: every length is checked
// before it is used.
//
// Checksums are verified, because a segment with a wrong one never
// reached its receiver's TCP and must not count. A capture taken on a
// sending host with checksum offload (and NFLOG copies of packets whose
// checksum the kernel or a veth peer leaves to the hardware) carries the
// pseudo-header sum in place of the checksum; that form is accepted as
// "to be filled in", not mistaken for a bad checksum.
func decode(data []byte, link layers.LinkType, seg *segment) decodeStatus {
	ip, ok := linkPayload(data, link)
	if !ok {
		return decodeBroken
	}
	if len(ip) == 0 {
		return decodeBroken
	}
	switch ip[0] >> 4 {
	case 4:
		return decodeIPv4(ip, seg)
	case 6:
		return decodeIPv6(ip, seg)
	}
	return decodeNotTCP
}

// linkPayload strips the link-layer header and returns the IP packet.
func linkPayload(b []byte, link layers.LinkType) ([]byte, bool) {
	switch link {
	case layers.LinkTypeEthernet:
		if len(b) < 14 {
			return nil, false
		}
		etype := binary.BigEndian.Uint16(b[12:])
		b = b[14:]
		for range 3 { // 802.1Q, 802.1ad and QinQ tags
			if etype != 0x8100 && etype != 0x88a8 && etype != 0x9100 {
				break
			}
			if len(b) < 4 {
				return nil, false
			}
			etype = binary.BigEndian.Uint16(b[2:])
			b = b[4:]
		}
		return ipByEtherType(b, etype)
	case layers.LinkTypeLinuxSLL:
		if len(b) < 16 {
			return nil, false
		}
		return ipByEtherType(b[16:], binary.BigEndian.Uint16(b[14:]))
	case layers.LinkTypeLinuxSLL2:
		if len(b) < 20 {
			return nil, false
		}
		return ipByEtherType(b[20:], binary.BigEndian.Uint16(b[0:]))
	case layers.LinkTypeNull, layers.LinkTypeLoop:
		if len(b) < 4 {
			return nil, false
		}
		// DLT_NULL's family is in the capturing host's byte order;
		// DLT_LOOP's in network order. Either way the IP version
		// nibble decides; the family only rules out non-IP.
		fam := binary.LittleEndian.Uint32(b)
		if fam > 0xffff {
			fam = binary.BigEndian.Uint32(b)
		}
		switch fam {
		case 2, 10, 24, 28, 30: // AF_INET; AF_INET6 on Linux and the BSDs
			return b[4:], true
		}
		return nil, true
	case layers.LinkTypeRaw, layers.LinkTypeIPv4, layers.LinkTypeIPv6, 12 /* DLT_RAW on some BSDs */ :
		return b, true
	}
	return nil, false
}

func ipByEtherType(b []byte, etype uint16) ([]byte, bool) {
	switch etype {
	case 0x0800, 0x86dd:
		return b, true
	}
	return nil, true // not IP: nothing for ftpgate, but not broken
}

func decodeIPv4(b []byte, seg *segment) decodeStatus {
	if len(b) < 20 {
		return decodeBroken
	}
	ihl := int(b[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(b[2:]))
	if ihl < 20 || total < ihl || total > len(b) {
		return decodeBroken
	}
	// A header checksum of zero is one left to the hardware, as hosts
	// with offload capture their own packets.
	if inetsum.Fold(inetsum.Sum(b[:ihl], 0)) != 0xffff && binary.BigEndian.Uint16(b[10:]) != 0 {
		return decodeBadSum
	}
	if b[9] != 6 {
		return decodeNotTCP
	}
	if frag := binary.BigEndian.Uint16(b[6:]); frag&0x3fff != 0 { // MF or an offset
		return decodeFragment
	}
	src := netip.AddrFrom4([4]byte(b[12:16]))
	dst := netip.AddrFrom4([4]byte(b[16:20]))
	pseudo := inetsum.Sum(b[12:20], uint32(6)+uint32(total-ihl))
	return decodeTCP(b[ihl:total], src, dst, pseudo, seg)
}

// IPv6 extension headers ftpgate walks over to find TCP.
const (
	ip6HopByHop = 0
	ip6Routing  = 43
	ip6Fragment = 44
	ip6AH       = 51
	ip6DestOpts = 60
	ip6Mobility = 135
)

func decodeIPv6(b []byte, seg *segment) decodeStatus {
	if len(b) < 40 {
		return decodeBroken
	}
	plen := int(binary.BigEndian.Uint16(b[4:]))
	if plen == 0 || 40+plen > len(b) { // 0: a jumbogram, which no control segment is
		return decodeBroken
	}
	next := b[6]
	rest := b[40 : 40+plen]
	for range 8 {
		switch next {
		case 6:
			src := netip.AddrFrom16([16]byte(b[8:24]))
			dst := netip.AddrFrom16([16]byte(b[24:40]))
			pseudo := inetsum.Sum(b[8:40], uint32(6)+uint32(len(rest)))
			return decodeTCP(rest, src, dst, pseudo, seg)
		case ip6HopByHop, ip6DestOpts, ip6Mobility, ip6Routing:
			if len(rest) < 8 {
				return decodeBroken
			}
			// A routing header with segments left would put the final
			// destination, not this one, into the TCP checksum.
			if next == ip6Routing && rest[3] != 0 {
				return decodeBroken
			}
			n := (int(rest[1]) + 1) * 8
			if n > len(rest) {
				return decodeBroken
			}
			next, rest = rest[0], rest[n:]
		case ip6AH:
			if len(rest) < 8 {
				return decodeBroken
			}
			n := (int(rest[1]) + 2) * 4
			if n > len(rest) {
				return decodeBroken
			}
			next, rest = rest[0], rest[n:]
		case ip6Fragment:
			return decodeFragment
		default:
			return decodeNotTCP
		}
	}
	return decodeBroken
}

func decodeTCP(b []byte, src, dst netip.Addr, pseudo uint32, seg *segment) decodeStatus {
	if len(b) < 20 {
		return decodeBroken
	}
	off := int(b[12]>>4) * 4
	if off < 20 || off > len(b) {
		return decodeBroken
	}
	if got := inetsum.Fold(inetsum.Sum(b, pseudo)); got != 0xffff {
		// Offloaded: the field holds the folded pseudo-header sum that
		// the hardware was to complete.
		if binary.BigEndian.Uint16(b[16:]) != inetsum.Fold(pseudo) {
			return decodeBadSum
		}
	}
	*seg = segment{
		src:     netip.AddrPortFrom(src, binary.BigEndian.Uint16(b[0:])),
		dst:     netip.AddrPortFrom(dst, binary.BigEndian.Uint16(b[2:])),
		seq:     binary.BigEndian.Uint32(b[4:]),
		ack:     binary.BigEndian.Uint32(b[8:]),
		flags:   b[13],
		window:  binary.BigEndian.Uint16(b[14:]),
		wscale:  -1,
		payload: b[off:],
	}
	if seg.has(flagSYN) {
		seg.wscale = windowScale(b[20:off])
	}
	return decodedTCP
}

// windowScale returns the shift of a window scale option, or -1.
func windowScale(opts []byte) int8 {
	for len(opts) > 0 {
		switch opts[0] {
		case 0: // end of options
			return -1
		case 1: // no-op
			opts = opts[1:]
			continue
		}
		if len(opts) < 2 || opts[1] < 2 || int(opts[1]) > len(opts) {
			return -1
		}
		if opts[0] == 3 && opts[1] == 3 {
			return int8(min(opts[2], 14))
		}
		opts = opts[opts[1]:]
	}
	return -1
}

// synKey reads the pinhole key a data SYN matches (source, destination,
// destination port) from its headers; the rest of the packet may be cut
// off, as in the kernel's reports of used pinholes.
func synKey(b []byte) (rules.Pinhole, bool) {
	if len(b) < 1 {
		return rules.Pinhole{}, false
	}
	var src, dst netip.Addr
	var tcp []byte
	switch b[0] >> 4 {
	case 4:
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 || len(b) < ihl+4 || b[9] != 6 {
			return rules.Pinhole{}, false
		}
		src, dst, tcp = netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20])), b[ihl:]
	case 6:
		if len(b) < 40 {
			return rules.Pinhole{}, false
		}
		src, dst = netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40]))
		next, rest := b[6], b[40:]
		for next != 6 {
			switch next {
			case ip6HopByHop, ip6DestOpts, ip6Routing:
				if len(rest) < 8 || (int(rest[1])+1)*8 > len(rest) {
					return rules.Pinhole{}, false
				}
				next, rest = rest[0], rest[(int(rest[1])+1)*8:]
			default:
				return rules.Pinhole{}, false
			}
		}
		tcp = rest
	default:
		return rules.Pinhole{}, false
	}
	if len(tcp) < 4 {
		return rules.Pinhole{}, false
	}
	return rules.Pinhole{Peer: src, Addr: dst, Port: binary.BigEndian.Uint16(tcp[2:])}, true
}
