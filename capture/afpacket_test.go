package capture

import (
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/net/bpf"
)

// ipPacket builds a TCP segment from the IP header on, as AF_PACKET
// SOCK_DGRAM hands packets over.
func ipPacket(t *testing.T, src, dst string, sport, dport uint16, destOpts bool) []byte {
	t.Helper()
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), ACK: true, Window: 512}
	var ls []gopacket.SerializableLayer
	if s := net.ParseIP(src); s.To4() != nil {
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: s, DstIP: net.ParseIP(dst)}
		_ = tcp.SetNetworkLayerForChecksum(ip)
		ls = append(ls, ip)
	} else {
		next := layers.IPProtocolTCP
		if destOpts {
			next = layers.IPProtocolIPv6Destination
		}
		ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: next, SrcIP: s, DstIP: net.ParseIP(dst)}
		_ = tcp.SetNetworkLayerForChecksum(ip)
		ls = append(ls, ip)
		if destOpts {
			ls = append(ls, gopacket.Payload([]byte{byte(layers.IPProtocolTCP), 0, 1, 4, 0, 0, 0, 0}))
		}
	}
	ls = append(ls, tcp, gopacket.Payload("PASV\r\n"))
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestControlPortFilter runs the capture filter on packets as AF_PACKET
// SOCK_DGRAM hands them over (from the IP header).
func TestControlPortFilter(t *testing.T) {
	raw, err := ControlPortFilter([]uint16{21, 2121})
	if err != nil {
		t.Fatal(err)
	}
	prog, ok := bpf.Disassemble(raw)
	if !ok {
		t.Fatal("filter does not disassemble")
	}
	vm, err := bpf.NewVM(prog)
	if err != nil {
		t.Fatal(err)
	}
	fragment := ipPacket(t, "192.0.2.10", "198.51.100.20", 40000, 21, false)
	fragment[6], fragment[7] = 0, 10 // a later fragment
	for _, tc := range []struct {
		name string
		pkt  []byte
		want bool
	}{
		{"IPv4 to port 21", ipPacket(t, "192.0.2.10", "198.51.100.20", 40000, 21, false), true},
		{"IPv4 from port 21", ipPacket(t, "198.51.100.20", "192.0.2.10", 21, 40000, false), true},
		{"IPv4 to another control port", ipPacket(t, "192.0.2.10", "198.51.100.20", 40000, 2121, false), true},
		{"IPv4 to port 80", ipPacket(t, "192.0.2.10", "198.51.100.20", 40000, 80, false), false},
		{"IPv4 later fragment", fragment, false},
		{"IPv6 to port 21", ipPacket(t, "2001:db8::10", "2001:db8:1::20", 40000, 21, false), true},
		{"IPv6 to port 443", ipPacket(t, "2001:db8::10", "2001:db8:1::20", 40000, 443, false), false},
		{"IPv6 behind destination options", ipPacket(t, "2001:db8::10", "2001:db8:1::20", 40000, 21, true), true},
	} {
		n, err := vm.Run(tc.pkt)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := n > 0; got != tc.want {
			t.Errorf("%s: passed %v, want %v", tc.name, got, tc.want)
		}
	}
}
