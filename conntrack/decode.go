package conntrack

import (
	"net/netip"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// LinkTypeRawIP is used for sources that deliver packets starting at the
// IP header (AF_PACKET SOCK_DGRAM, NFQUEUE, raw-IP captures): the version
// nibble tells IPv4 from IPv6.
const LinkTypeRawIP = layers.LinkTypeRaw

// decoded is what reassembly needs from one packet.
type decoded struct {
	netFlow  gopacket.Flow
	src, dst netip.Addr
	tcp      *layers.TCP
	fragment bool
}

// decoder decodes packets into preallocated layers, without allocating
// per packet.
type decoder struct {
	eth     layers.Ethernet
	sll     layers.LinuxSLL
	sll2    layers.LinuxSLL2
	loop    layers.Loopback
	dot1q   layers.Dot1Q
	ip4     layers.IPv4
	ip6     layers.IPv6
	tcp     layers.TCP
	parsers map[gopacket.LayerType]*gopacket.DecodingLayerParser
	types   []gopacket.LayerType
}

func (d *decoder) init() {
	d.parsers = make(map[gopacket.LayerType]*gopacket.DecodingLayerParser)
	for _, first := range []gopacket.LayerType{
		layers.LayerTypeEthernet, layers.LayerTypeLinuxSLL, layers.LayerTypeLinuxSLL2,
		layers.LayerTypeLoopback, layers.LayerTypeIPv4, layers.LayerTypeIPv6,
	} {
		p := gopacket.NewDecodingLayerParser(first,
			&d.eth, &d.sll, &d.sll2, &d.loop, &d.dot1q, &d.ip4, &d.ip6, &d.tcp)
		p.IgnoreUnsupported = true
		d.parsers[first] = p
	}
	d.types = make([]gopacket.LayerType, 0, 8)
}

func (d *decoder) firstLayer(data []byte, link layers.LinkType) gopacket.LayerType {
	switch link {
	case layers.LinkTypeEthernet:
		return layers.LayerTypeEthernet
	case layers.LinkTypeLinuxSLL:
		return layers.LayerTypeLinuxSLL
	case layers.LinkTypeLinuxSLL2:
		return layers.LayerTypeLinuxSLL2
	case layers.LinkTypeNull, layers.LinkTypeLoop:
		return layers.LayerTypeLoopback
	case layers.LinkTypeRaw, layers.LinkTypeIPv4, layers.LinkTypeIPv6, 12 /* DLT_RAW on some BSDs */ :
		if len(data) > 0 && data[0]>>4 == 6 {
			return layers.LayerTypeIPv6
		}
		return layers.LayerTypeIPv4
	}
	return gopacket.LayerTypeZero
}

// decode returns the TCP segment of a packet, or false if there is none.
func (d *decoder) decode(data []byte, link layers.LinkType) (decoded, bool) {
	p := d.parsers[d.firstLayer(data, link)]
	if p == nil {
		return decoded{}, false
	}
	// DecodeLayers reports an error for truncated layers; what decoded
	// before the error is still listed in d.types.
	_ = p.DecodeLayers(data, &d.types)
	var out decoded
	var haveIP, haveTCP bool
	for _, t := range d.types {
		switch t {
		case layers.LayerTypeIPv4:
			out.src, _ = netip.AddrFromSlice(d.ip4.SrcIP.To4())
			out.dst, _ = netip.AddrFromSlice(d.ip4.DstIP.To4())
			out.netFlow = d.ip4.NetworkFlow()
			out.fragment = d.ip4.Flags&layers.IPv4MoreFragments != 0 || d.ip4.FragOffset != 0
			haveIP = true
		case layers.LayerTypeIPv6:
			out.src, _ = netip.AddrFromSlice(d.ip6.SrcIP)
			out.dst, _ = netip.AddrFromSlice(d.ip6.DstIP)
			out.netFlow = d.ip6.NetworkFlow()
			haveIP = true
		case layers.LayerTypeTCP:
			haveTCP = true
		}
	}
	if !haveIP || (!haveTCP && !out.fragment) || !out.src.IsValid() || !out.dst.IsValid() {
		return decoded{}, false
	}
	out.tcp = &d.tcp
	return out, true
}
