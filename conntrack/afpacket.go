package conntrack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/gopacket/gopacket/afpacket"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/bpf"
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

// AFPacketSource captures on Linux AF_PACKET sockets (pure Go, no
// libpcap), one per interface, or one for all interfaces.
type AFPacketSource struct {
	handles []*afpacket.TPacket
	log     *slog.Logger
}

// OpenAFPacket opens capture sockets on the named interfaces (all when
// none is named), with the control-port filter attached in the kernel.
func OpenAFPacket(ifaces []string, ports []uint16, log *slog.Logger) (*AFPacketSource, error) {
	filter, err := ControlPortFilter(ports)
	if err != nil {
		return nil, err
	}
	if len(ifaces) == 0 {
		ifaces = []string{""}
	}
	s := &AFPacketSource{log: log}
	for _, name := range ifaces {
		if name != "" {
			link, err := netlink.LinkByName(name)
			if err != nil {
				return nil, fmt.Errorf("interface %q: %w", name, err)
			}
			if link.Attrs().OperState != netlink.OperUp && link.Attrs().Flags&net.FlagUp == 0 {
				log.Warn("interface is down; capturing anyway", "interface", name)
			}
		}
		// TPACKET_V2 hands over each packet at once (V3 waits for a block
		// to fill or time out). 4096 frames of 8 KiB: control segments are
		// small, and a ring that overflows costs reassembly gaps.
		opts := []any{afpacket.SocketDgram, afpacket.TPacketVersion2, afpacket.OptPollTimeout(200 * time.Millisecond),
			afpacket.OptFrameSize(1 << 13), afpacket.OptBlockSize(1 << 20), afpacket.OptNumBlocks(32)}
		if name != "" {
			opts = append(opts, afpacket.OptInterface(name))
		}
		h, err := afpacket.NewTPacket(opts...)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("opening AF_PACKET capture on %s: %w", ifaceName(name), err)
		}
		s.handles = append(s.handles, h)
		if err := h.SetBPF(filter); err != nil {
			s.Close()
			return nil, fmt.Errorf("attaching control-port filter on %s: %w", ifaceName(name), err)
		}
	}
	return s, nil
}

func ifaceName(n string) string {
	if n == "" {
		return "all interfaces"
	}
	return n
}

// Start reads every socket in its own goroutine and sends copies of the
// packets to the returned channel until ctx ends.
func (s *AFPacketSource) Start(ctx context.Context) <-chan Packet {
	out := make(chan Packet, 1024)
	var wg sync.WaitGroup
	for _, h := range s.handles {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				data, ci, err := h.ZeroCopyReadPacketData()
				if err != nil {
					if errors.Is(err, afpacket.ErrTimeout) || errors.Is(err, afpacket.ErrPoll) {
						continue
					}
					if ctx.Err() == nil {
						s.log.Error("capture stopped", "error", err)
					}
					return
				}
				p := Packet{Data: append([]byte(nil), data...), Link: LinkTypeRawIP, CI: ci}
				select {
				case out <- p:
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	go func() { wg.Wait(); close(out) }()
	return out
}

// Close closes every socket.
func (s *AFPacketSource) Close() error {
	for _, h := range s.handles {
		h.Close()
	}
	s.handles = nil
	return nil
}
