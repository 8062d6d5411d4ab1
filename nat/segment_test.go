package nat

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/ftpgate/ftpgate/internal/inetsum"
)

// tcpSeg is a segment as a test describes it.
type tcpSeg struct {
	src, dst netip.Addr
	seq, ack uint32
	acked    bool
	sack     [][2]uint32
	payload  []byte
	ipv6Opts bool // an IPv6 destination options header before TCP
	// sport, dport: 40000 and 21 unless set; syn, fin, rst: flags.
	sport, dport  uint16
	syn, fin, rst bool
	ttl           uint8 // 63 unless set
}

// build serializes s with gopacket, lengths and checksums computed: the
// oracle the rewriter's output is compared with, byte for byte.
func (s tcpSeg) build(t testing.TB) []byte {
	t.Helper()
	if s.sport == 0 {
		s.sport, s.dport = 40000, 21
	}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(s.sport), DstPort: layers.TCPPort(s.dport), Seq: s.seq, Ack: s.ack, ACK: s.acked,
		SYN: s.syn, FIN: s.fin, RST: s.rst, PSH: len(s.payload) > 0, Window: 502}
	tcp.Options = append(tcp.Options, layers.TCPOption{OptionType: layers.TCPOptionKindNop}, layers.TCPOption{OptionType: layers.TCPOptionKindNop},
		layers.TCPOption{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: []byte{0, 0, 0, 1, 0, 0, 0, 2}})
	if len(s.sack) > 0 {
		var d []byte
		for _, e := range s.sack {
			d = binary.BigEndian.AppendUint32(d, e[0])
			d = binary.BigEndian.AppendUint32(d, e[1])
		}
		tcp.Options = append(tcp.Options, layers.TCPOption{OptionType: layers.TCPOptionKindNop}, layers.TCPOption{OptionType: layers.TCPOptionKindNop},
			layers.TCPOption{OptionType: layers.TCPOptionKindSACK, OptionLength: uint8(2 + len(d)), OptionData: d})
	}
	var ls []gopacket.SerializableLayer
	if s.src.Is4() {
		if s.ttl == 0 {
			s.ttl = 63
		}
		ip := &layers.IPv4{Version: 4, TTL: s.ttl, Id: 0x1234, Flags: layers.IPv4DontFragment, Protocol: layers.IPProtocolTCP, SrcIP: s.src.AsSlice(), DstIP: s.dst.AsSlice()}
		_ = tcp.SetNetworkLayerForChecksum(ip)
		ls = append(ls, ip)
	} else {
		ip := &layers.IPv6{Version: 6, HopLimit: 63, NextHeader: layers.IPProtocolTCP, SrcIP: s.src.AsSlice(), DstIP: s.dst.AsSlice()}
		_ = tcp.SetNetworkLayerForChecksum(ip)
		ls = append(ls, ip)
		if s.ipv6Opts {
			ip.NextHeader = layers.IPProtocolIPv6Destination
			opts := &layers.IPv6Destination{}
			opts.NextHeader = layers.IPProtocolTCP
			opts.Options = []*layers.IPv6DestinationOption{{OptionType: 1, OptionLength: 4, OptionData: []byte{0, 0, 0, 0}}}
			ls = append(ls, opts)
		}
	}
	ls = append(ls, tcp, gopacket.Payload(s.payload))
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatalf("serialize: %v", err)
	}
	return buf.Bytes()
}

func TestSegmentAdjusted(t *testing.T) {
	own, other := &SeqAdjust{}, &SeqAdjust{}
	own.Add(1000, 7)    // a line at 1000 grew by 7
	other.Add(5000, -3) // the other side's line at 5000 shrank by 3
	for _, v6 := range []bool{false, true} {
		for _, opts := range []bool{false, true} {
			if opts && !v6 {
				continue
			}
			src, dst := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("198.51.100.2")
			if v6 {
				src, dst = netip.MustParseAddr("2001:db8::10"), netip.MustParseAddr("2001:db8:1::2")
			}
			in := tcpSeg{src: src, dst: dst, seq: 1020, ack: 5100, acked: true, sack: [][2]uint32{{5200, 5300}, {4000, 4100}},
				payload: []byte("PORT 10,0,0,5,195,80\r\n"), ipv6Opts: opts}
			seg, err := ParseSegment(in.build(t))
			if err != nil {
				t.Fatalf("v6 %v: %v", v6, err)
			}
			if seg.Seq != 1020 || seg.Ack != 5100 || !bytes.Equal(seg.Payload(), in.payload) {
				t.Fatalf("parsed seq %d ack %d payload %q", seg.Seq, seg.Ack, seg.Payload())
			}
			newPayload := []byte("PORT 203,0,113,1,200,10\r\n")
			got, err := seg.Adjusted(nil, newPayload, own, other)
			if err != nil {
				t.Fatal(err)
			}
			// After both corrections: seq +7; the ack and the SACK
			// edges above the other side's correction (in the
			// receiver's numbers, 5000-3) come back by +3, those
			// before it stay.
			want := in
			want.seq, want.ack, want.payload = 1027, 5103, newPayload
			want.sack = [][2]uint32{{5203, 5303}, {4000, 4100}}
			if w := want.build(t); !bytes.Equal(got, w) {
				t.Errorf("v6 %v opts %v:\n got %x\nwant %x", v6, opts, got, w)
			}
			// Unchanged payload: only the numbers move.
			got, err = seg.Adjusted(nil, nil, own, other)
			if err != nil {
				t.Fatal(err)
			}
			want.payload = in.payload
			if w := want.build(t); !bytes.Equal(got, w) {
				t.Errorf("v6 %v opts %v, same payload:\n got %x\nwant %x", v6, opts, got, w)
			}
		}
	}
}

func TestSegmentRefused(t *testing.T) {
	good := tcpSeg{src: netip.MustParseAddr("192.0.2.10"), dst: netip.MustParseAddr("198.51.100.2"), payload: []byte("x")}.build(t)
	frag := bytes.Clone(good)
	frag[6] |= 0x20 // more fragments
	udp := bytes.Clone(good)
	udp[9] = 17
	short := good[:len(good)-2] // total length says more
	for name, pkt := range map[string][]byte{"fragment": frag, "udp": udp, "short": short, "empty": nil, "ipv5": {0x50}} {
		if _, err := ParseSegment(pkt); !errors.Is(err, ErrNotRewritable) {
			t.Errorf("%s: %v, want ErrNotRewritable", name, err)
		}
	}
	seg, err := ParseSegment(good)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := seg.Adjusted(nil, make([]byte, 70000), &SeqAdjust{}, &SeqAdjust{}); !errors.Is(err, ErrNotRewritable) {
		t.Errorf("oversized payload: %v, want ErrNotRewritable", err)
	}
}

// TestSeqAdjustKernel checks SeqAdjust against the kernel's seqadj for
// one correction (nf_ct_seq_adjust, nf_ct_sack_block_adjust).
func TestSeqAdjustKernel(t *testing.T) {
	var a SeqAdjust
	if a.Seq(5) != 0 || a.Ack(5) != 0 || a.Offset() != 0 {
		t.Fatal("an empty SeqAdjust shifts")
	}
	a.Add(100, 10)
	for _, c := range []struct {
		seq, ack uint32
		seqOff   int32
		ackOff   int32
	}{
		{seq: 100, seqOff: 0, ack: 100, ackOff: 0},   // the rewritten segment itself: the shift before it; an ack of none of it
		{seq: 99, seqOff: 0, ack: 99, ackOff: 0},     // before it
		{seq: 101, seqOff: 10, ack: 110, ackOff: 10}, // after it; an ack of any of it (the kernel's test)
		{seq: 100 + 1<<31 - 1, seqOff: 10, ack: 101, ackOff: 10},
	} {
		if got := a.Seq(c.seq); got != c.seqOff {
			t.Errorf("Seq(%d) = %d, want %d", c.seq, got, c.seqOff)
		}
		if got := a.Ack(c.ack); got != c.ackOff {
			t.Errorf("Ack(%d) = %d, want %d", c.ack, got, c.ackOff)
		}
	}
	// A retransmission of the rewritten segment records nothing new.
	a.Add(100, 10)
	if a.Offset() != 10 || len(a.corr) != 1 {
		t.Fatalf("retransmission recorded: %+v", a.corr)
	}
	// A second correction; the first still serves a late retransmission
	// (the kernel would give it the second's shift before).
	a.Add(200, -4)
	if a.Offset() != 6 || a.Seq(150) != 10 || a.Seq(250) != 6 || a.Seq(50) != 0 {
		t.Fatalf("two corrections: offset %d, Seq(150) %d, Seq(250) %d, Seq(50) %d", a.Offset(), a.Seq(150), a.Seq(250), a.Seq(50))
	}
	if a.Ack(215) != 6 || a.Ack(160) != 10 || a.Ack(100) != 0 {
		t.Fatalf("two corrections: Ack(215) %d, Ack(160) %d, Ack(100) %d", a.Ack(215), a.Ack(160), a.Ack(100))
	}
	for i := range MaxCorrections + 5 {
		a.Add(uint32(300+10*i), 1)
	}
	if len(a.corr) != MaxCorrections || a.Offset() != 6+MaxCorrections+5 {
		t.Fatalf("bounded: %d corrections, offset %d", len(a.corr), a.Offset())
	}
}

// TestSeqAdjustStream checks that every byte's acknowledgement comes back
// to the sender's number across many rewrites, across the 2^32 wrap: the
// receiver acks byte x of the rewritten stream; the sender must get the
// end of the original byte it came from.
func TestSeqAdjustStream(t *testing.T) {
	var a SeqAdjust
	const isn = 0xfffff000
	seq, wire := uint32(isn), uint32(isn)
	for i := range 40 {
		line := 20 + i%7
		delta := int32(i%5) - 2
		if got := a.Seq(seq); wire != seq+uint32(got) {
			t.Fatalf("line %d at %d: shifted to %d, wire is at %d", i, seq, seq+uint32(got), wire)
		}
		a.Add(seq, delta)
		newLen := uint32(int32(line) + delta)
		// The receiver acks the whole rewritten line: the sender must
		// see the end of its own line.
		ack := wire + newLen
		if back := ack - uint32(a.Ack(ack)); back != seq+uint32(line) {
			t.Fatalf("line %d: ack %d came back as %d, want %d", i, ack, back, seq+uint32(line))
		}
		seq += uint32(line)
		wire += newLen
	}
}

func FuzzSegment(f *testing.F) {
	f.Add(tcpSeg{src: netip.MustParseAddr("192.0.2.10"), dst: netip.MustParseAddr("198.51.100.2"), seq: 7, ack: 9, acked: true,
		sack: [][2]uint32{{1, 2}}, payload: []byte("227 Entering Passive Mode (10,0,0,2,4,1)\r\n")}.build(f), []byte("227 (1,2,3,4,5,6)\r\n"), int16(5))
	f.Add(tcpSeg{src: netip.MustParseAddr("2001:db8::1"), dst: netip.MustParseAddr("2001:db8::2"), seq: 7, payload: []byte("x"), ipv6Opts: true}.build(f), []byte(nil), int16(-3))
	f.Fuzz(func(t *testing.T, pkt, payload []byte, delta int16) {
		seg, err := ParseSegment(pkt)
		if err != nil {
			return
		}
		var own, other SeqAdjust
		own.Add(seg.Seq-1, int32(delta))
		other.Add(seg.Ack-100, int32(-delta))
		out, err := seg.Adjusted(nil, payload, &own, &other)
		if err != nil {
			return
		}
		again, err := ParseSegment(out)
		if err != nil {
			t.Fatalf("the rewritten packet does not parse: %v", err)
		}
		want := payload
		if want == nil {
			want = seg.Payload()
		}
		if !bytes.Equal(again.Payload(), want) || again.Seq != seg.Seq+uint32(int32(delta)) {
			t.Fatalf("payload %q seq %d, want %q %d", again.Payload(), again.Seq, want, seg.Seq+uint32(int32(delta)))
		}
		tcp := out[again.tcpAt:again.end]
		if inetsum.Fold(inetsum.Sum(tcp, again.pseudo(out, len(tcp)))) != 0xffff {
			t.Fatal("TCP checksum wrong")
		}
		if !again.v6 && inetsum.Fold(inetsum.Sum(out[:again.tcpAt], 0)) != 0xffff {
			t.Fatal("IPv4 header checksum wrong")
		}
	})
}
