package conntrack

import (
	"testing"

	"golang.org/x/net/bpf"
)

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
	ip := func(frame []byte) []byte { return frame[14:] }
	v4 := newConn(t, cli, srv)
	v4other := newConn(t, "192.0.2.10:40000", "198.51.100.20:80")
	v4alt := newConn(t, "192.0.2.10:40000", "198.51.100.20:2121")
	v6 := newConn(t, "[2001:db8::10]:40000", "[2001:db8:1::20]:21")
	v6other := newConn(t, "[2001:db8::10]:40000", "[2001:db8:1::20]:443")
	fragment := ip(v4.send(true, "PASV\r\n"))
	fragment = append([]byte(nil), fragment...)
	fragment[6], fragment[7] = 0, 10 // a later fragment
	for _, tc := range []struct {
		name string
		pkt  []byte
		want bool
	}{
		{"IPv4 to port 21", ip(v4.send(true, "PASV\r\n")), true},
		{"IPv4 from port 21", ip(v4.send(false, "227 x\r\n")), true},
		{"IPv4 to another control port", ip(v4alt.send(true, "PASV\r\n")), true},
		{"IPv4 to port 80", ip(v4other.send(true, "GET /\r\n")), false},
		{"IPv4 later fragment", fragment, false},
		{"IPv6 to port 21", ip(v6.send(true, "EPSV\r\n")), true},
		{"IPv6 to port 443", ip(v6other.send(true, "x")), false},
		{"IPv6 behind destination options", ip(withDestOpts(v6.send(true, "EPSV\r\n"))), true},
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
