package capture

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// IPv6 extension headers the filter passes on (IANA protocol numbers).
const (
	ip6HopByHop = 0
	ip6Routing  = 43
	ip6AH       = 51
	ip6DestOpts = 60
	ip6Mobility = 135
)

// ControlPortFilter returns a classic BPF program for packets that start
// at the IP header (AF_PACKET SOCK_DGRAM): IPv4 or IPv6 TCP whose source
// or destination port is one of ports. Everything else, data connections
// above all, is dropped in the kernel and never reaches ftpgate. IPv4
// fragments after the first are dropped too. IPv6 packets with extension
// headers before TCP (other than a fragment header) are all passed on,
// since walking the header chain is beyond a classic BPF program; ftpgate
// decodes and filters them itself.
func ControlPortFilter(ports []uint16) ([]bpf.RawInstruction, error) {
	if len(ports) == 0 || len(ports) > 32 {
		return nil, fmt.Errorf("control ports: want 1 to 32, have %d", len(ports))
	}
	// Port checks: X holds the offset of the TCP header. Each port is
	// tested on the source (X+0) then the destination (X+2).
	portChecks := func() []bpf.Instruction {
		var ins []bpf.Instruction
		for _, field := range []uint32{0, 2} {
			ins = append(ins, bpf.LoadIndirect{Off: field, Size: 2})
			for _, p := range ports {
				ins = append(ins, bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(p), SkipTrue: 0xff}) // patched below
			}
		}
		return ins
	}
	var prog []bpf.Instruction
	prog = append(prog,
		bpf.LoadAbsolute{Off: 0, Size: 1},
		bpf.ALUOpConstant{Op: bpf.ALUOpShiftRight, Val: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: 6, SkipTrue: 0xfe},    // to IPv6, patched below
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 4, SkipTrue: 0xfd}, // to reject, patched below
		// IPv4: protocol TCP, not a later fragment.
		bpf.LoadAbsolute{Off: 9, Size: 1},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 6, SkipTrue: 0xfd},
		bpf.LoadAbsolute{Off: 6, Size: 2},
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 0x1fff, SkipTrue: 0xfd},
		bpf.LoadMemShift{Off: 0},
	)
	prog = append(prog, portChecks()...)
	prog = append(prog, bpf.Jump{Skip: 0xfd})
	v6 := len(prog)
	prog = append(prog, bpf.LoadAbsolute{Off: 6, Size: 1})
	for _, ext := range []uint32{ip6HopByHop, ip6Routing, ip6AH, ip6DestOpts, ip6Mobility} {
		prog = append(prog, bpf.JumpIf{Cond: bpf.JumpEqual, Val: ext, SkipTrue: 0xff})
	}
	prog = append(prog,
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 6, SkipTrue: 0xfd},
		bpf.LoadConstant{Dst: bpf.RegX, Val: 40},
	)
	prog = append(prog, portChecks()...)
	reject := len(prog)
	prog = append(prog, bpf.RetConstant{Val: 0})
	accept := len(prog)
	prog = append(prog, bpf.RetConstant{Val: 0x40000})
	// Patch the placeholder jump targets now that positions are known.
	for i, ins := range prog {
		skipTo := func(target int) uint8 { return uint8(target - i - 1) }
		switch j := ins.(type) {
		case bpf.JumpIf:
			switch {
			case j.SkipTrue == 0xff:
				j.SkipTrue = skipTo(accept)
			case j.SkipTrue == 0xfe:
				j.SkipTrue = skipTo(v6)
			case j.SkipTrue == 0xfd:
				j.SkipTrue = skipTo(reject)
			}
			prog[i] = j
		case bpf.Jump:
			if j.Skip == 0xfd {
				j.Skip = uint32(reject - i - 1)
			}
			prog[i] = j
		}
	}
	return bpf.Assemble(prog)
}

// AFPacketSource copies packets from one interface, or from all, through
// an AF_PACKET socket with the control-port filter in the kernel: pure
// Go, no libpcap. It reads with plain non-blocking system calls rather
// than a TPACKET ring, so that its socket can be waited on with the
// others (capture.Run); control traffic is far too little to need a ring.
type AFPacketSource struct {
	fd    int
	iface string
	buf   []byte
	pkts  []Packet
}

// OpenAFPacket opens a capture socket on the named interface (all
// interfaces when the name is empty), filtered to the control ports. An
// interface that is down is captured anyway, with a warning.
func OpenAFPacket(iface string, ports []uint16, log *slog.Logger) (*AFPacketSource, error) {
	filter, err := ControlPortFilter(ports)
	if err != nil {
		return nil, err
	}
	ifindex := 0
	if iface != "" {
		link, err := netlink.LinkByName(iface)
		if err != nil {
			return nil, fmt.Errorf("interface %q: %w", iface, err)
		}
		if a := link.Attrs(); a.OperState != netlink.OperUp && a.Flags&net.FlagUp == 0 {
			log.Warn("interface is down; capturing anyway", "interface", iface)
		}
		ifindex = link.Attrs().Index
	}
	// Protocol 0 receives nothing until bind, so no packet gets in
	// before the filter is attached.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening AF_PACKET capture on %s: %w", ifaceName(iface), err)
	}
	fail := func(what string, err error) (*AFPacketSource, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("%s on %s: %w", what, ifaceName(iface), err)
	}
	if err := attachFilter(fd, filter); err != nil {
		return fail("attaching the control-port filter", err)
	}
	// A ring that overflows costs reassembly gaps: 8 MiB of control
	// segments is a lot of slack.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex}); err != nil {
		return fail("binding AF_PACKET capture", err)
	}
	return &AFPacketSource{fd: fd, iface: iface, buf: make([]byte, 1<<20)}, nil
}

func attachFilter(fd int, filter []bpf.RawInstruction) error {
	prog := make([]unix.SockFilter, len(filter))
	for i, ins := range filter {
		prog[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
	}
	return unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]})
}

// SetPorts replaces the control-port filter (a reload): the kernel
// swaps it at once.
func (s *AFPacketSource) SetPorts(ports []uint16) error {
	filter, err := ControlPortFilter(ports)
	if err == nil {
		err = attachFilter(s.fd, filter)
	}
	if err != nil {
		return fmt.Errorf("capture on %s: changing the control-port filter: %w", ifaceName(s.iface), err)
	}
	return nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func ifaceName(n string) string {
	if n == "" {
		return "all interfaces"
	}
	return n
}

// Fd is the socket to poll.
func (s *AFPacketSource) Fd() int { return s.fd }

// Read hands every packet waiting to fn, without blocking; at most what
// fits its buffer (1 MiB) at a time.
func (s *AFPacketSource) Read(fn func(*Packet)) error {
	s.pkts = s.pkts[:0]
	now := time.Now()
	off := 0
	for len(s.buf)-off >= 65536 {
		n, err := recvNonblocking(s.fd, s.buf[off:], 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if err != nil {
			return fmt.Errorf("capturing on %s: %w", ifaceName(s.iface), err)
		}
		s.pkts = append(s.pkts, Packet{Data: s.buf[off : off+n : off+n], Link: LinkTypeRawIP, Time: now, Kind: Copy})
		off += n
	}
	for i := range s.pkts {
		fn(&s.pkts[i])
	}
	return nil
}

// Close closes the socket.
func (s *AFPacketSource) Close() error { return unix.Close(s.fd) }
