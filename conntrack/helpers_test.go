package conntrack

import (
	"bytes"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/ftpgate/ftpgate/rules"
)

// conn crafts the packets of one TCP control connection, both ways.
type conn struct {
	t              testing.TB
	client, server netip.AddrPort
	cseq, sseq     uint32 // next sequence number of each side
	ts             time.Time
}

func newConn(t testing.TB, client, server string) *conn {
	return &conn{
		t: t, client: netip.MustParseAddrPort(client), server: netip.MustParseAddrPort(server),
		cseq: 1000, sseq: 5000, ts: time.Unix(1700000000, 0),
	}
}

// packet builds an Ethernet frame from one side with the given flags,
// sequence number and payload, acknowledging everything the other side
// has sent.
func (c *conn) packet(fromClient bool, seq uint32, flags string, payload []byte) []byte {
	ack := c.sseq
	if !fromClient {
		ack = c.cseq
	}
	return c.segment(fromClient, seq, ack, flags, payload)
}

// segment builds an Ethernet frame with an explicit acknowledgement number.
func (c *conn) segment(fromClient bool, seq, ack uint32, flags string, payload []byte) []byte {
	src, dst := c.client, c.server
	if !fromClient {
		src, dst = c.server, c.client
	}
	tcp := &layers.TCP{
		SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()),
		Seq: seq, Ack: ack, Window: 65535,
		SYN: bytes.ContainsRune([]byte(flags), 'S'), ACK: bytes.ContainsRune([]byte(flags), 'A'),
		FIN: bytes.ContainsRune([]byte(flags), 'F'), RST: bytes.ContainsRune([]byte(flags), 'R'),
		PSH: len(payload) > 0,
	}
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}}
	var ip gopacket.SerializableLayer
	if src.Addr().Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP,
			SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
		_ = tcp.SetNetworkLayerForChecksum(ip4)
		ip = ip4
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP,
			SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
		_ = tcp.SetNetworkLayerForChecksum(ip6)
		ip = ip6
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, eth, ip, tcp, gopacket.Payload(payload)); err != nil {
		c.t.Fatalf("serialize: %v", err)
	}
	return buf.Bytes()
}

// handshake returns the three packets of the TCP handshake.
func (c *conn) handshake() [][]byte {
	p := [][]byte{c.packet(true, c.cseq, "S", nil)}
	c.cseq++
	p = append(p, c.packet(false, c.sseq, "SA", nil))
	c.sseq++
	p = append(p, c.packet(true, c.cseq, "A", nil))
	return p
}

// greeted returns the handshake and the server's greeting.
func (c *conn) greeted() [][]byte {
	return append(c.handshake(), c.send(false, "220 ready\r\n"))
}

// send returns a data segment from one side and advances its sequence.
func (c *conn) send(fromClient bool, data string) []byte {
	if fromClient {
		p := c.packet(true, c.cseq, "A", []byte(data))
		c.cseq += uint32(len(data))
		return p
	}
	p := c.packet(false, c.sseq, "A", []byte(data))
	c.sseq += uint32(len(data))
	return p
}

func (c *conn) fin(fromClient bool) []byte {
	if fromClient {
		p := c.packet(true, c.cseq, "FA", nil)
		c.cseq++
		return p
	}
	p := c.packet(false, c.sseq, "FA", nil)
	c.sseq++
	return p
}

// harness is a tracker with a dry-run backend that records every channel.
type harness struct {
	t        *testing.T
	tr       *Tracker
	fw       *rules.DryRun
	channels []Channel
	ts       time.Time
}

func newHarness(t *testing.T, cfg Config) *harness {
	h := &harness{t: t, fw: rules.NewDryRun(), ts: time.Unix(1700000000, 0)}
	cfg.Observer = onChannel(func(c Channel) { h.channels = append(h.channels, c) })
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	h.tr = NewTracker(cfg, h.fw)
	return h
}

func (h *harness) feed(pkts ...[]byte) {
	h.t.Helper()
	for _, p := range pkts {
		h.ts = h.ts.Add(time.Millisecond)
		h.tr.HandlePacket(p, layers.LinkTypeEthernet, h.ts)
	}
	if err := h.tr.Commit(); err != nil {
		h.t.Fatalf("Commit: %v", err)
	}
}

// open returns the pinholes the dry-run backend holds now.
func (h *harness) open() map[rules.Pinhole]bool {
	m := make(map[rules.Pinhole]bool)
	for p := range h.fw.Open {
		m[p] = true
	}
	return m
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func pin(peer, addr string, port uint16) rules.Pinhole {
	return rules.Pinhole{Peer: netip.MustParseAddr(peer), Addr: netip.MustParseAddr(addr), Port: port}
}

// sendAck is send with an explicit acknowledgement number.
func (c *conn) sendAck(fromClient bool, ack uint32, data string) []byte {
	if fromClient {
		p := c.segment(true, c.cseq, ack, "A", []byte(data))
		c.cseq += uint32(len(data))
		return p
	}
	p := c.segment(false, c.sseq, ack, "A", []byte(data))
	c.sseq += uint32(len(data))
	return p
}

// badSum returns a copy of an Ethernet frame whose TCP checksum is wrong.
func badSum(frame []byte) []byte {
	p := append([]byte(nil), frame...)
	ip := p[14:]
	off := 40
	if ip[0]>>4 == 4 {
		off = int(ip[0]&0x0f) * 4
	}
	ip[off+16] ^= 0x5a
	return p
}

// withDestOpts inserts an IPv6 destination options header (a PadN
// option) between the IPv6 header and TCP of an Ethernet frame.
func withDestOpts(frame []byte) []byte {
	ip := frame[14:]
	if ip[0]>>4 != 6 {
		panic("not IPv6")
	}
	ext := []byte{ip[6], 0, 1, 4, 0, 0, 0, 0} // next header TCP, 8 bytes, PadN
	out := append([]byte(nil), frame[:14+40]...)
	out[14+6] = 60
	plen := int(out[14+4])<<8 | int(out[14+5]) + len(ext)
	out[14+4], out[14+5] = byte(plen>>8), byte(plen)
	out = append(out, ext...)
	return append(out, ip[40:]...)
}

// onChannel is an Observer of channels only.
type onChannel func(Channel)

func (f onChannel) Channel(c Channel)         { f(c) }
func (onChannel) ChannelClosed(ChannelClosed) {}
func (onChannel) Line(ControlLine)            {}
func (onChannel) SessionEnd(SessionEnd)       {}
func (onChannel) Encrypted(EncryptedSession)  {}
func (onChannel) DataSYN(DataSYN)             {}

// closeConnFunc stands in for the control proxy.
type closeConnFunc func(id uint64)

func (f closeConnFunc) CloseConn(id uint64) { f(id) }
