package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/ftpgate/ftpgate/capture"
	"github.com/ftpgate/ftpgate/conntrack"
	"github.com/ftpgate/ftpgate/nat"
	"github.com/ftpgate/ftpgate/rules"
)

// These tests run the daemon's loop, capture.Run with a daemonLoop and a
// real tracker, on fake sources and a dry-run backend: no sockets, no
// root. Every source is always ready (Fd -1), so each round of a
// source's script is one round of the loop; the journal shows what
// reached the kernel and what went on, in order.

// The proxy source must stay a Holder, or the bytes would never go on,
// and a Sharer, or the loop would keep the proxy's relays from running
// while it waits.
var (
	_ capture.Holder = proxySource{}
	_ capture.Sharer = proxySource{}
)

type journal []string

func (j *journal) add(format string, args ...any) { *j = append(*j, fmt.Sprintf(format, args...)) }

// before fails unless the first event starting with a comes before the
// first starting with b.
func (j *journal) before(t *testing.T, a, b string) {
	t.Helper()
	find := func(prefix string) int {
		return slices.IndexFunc(*j, func(e string) bool { return strings.HasPrefix(e, prefix) })
	}
	i, k := find(a), find(b)
	if i < 0 || k < 0 || i > k {
		t.Fatalf("want %q before %q in %q", a, b, *j)
	}
}

// journaledBackend is a dry run that journals each commit with what is
// then in the kernel.
type journaledBackend struct {
	*rules.DryRun
	j *journal
}

func (b journaledBackend) Commit() error {
	err := b.DryRun.Commit()
	b.j.add("commit: %d peers, %d pinholes, %d maps", len(b.Peers), len(b.Open), len(b.Maps))
	return err
}

func (b journaledBackend) CommitPeers() error {
	err := b.DryRun.CommitPeers()
	b.j.add("commit peers: %d peers, %d pinholes", len(b.Peers), len(b.Open))
	return err
}

// newLoop is a daemon loop on a tracker whose commit delay never passes
// in a test, unless commitDelay says otherwise: what reaches the kernel
// then does so because the loop committed it.
func newLoop(t *testing.T, j *journal, commitDelay time.Duration) (*daemonLoop, *rules.DryRun) {
	if commitDelay == 0 {
		commitDelay = time.Hour
	}
	fw := rules.NewDryRun()
	cfg := conntrack.Config{Inline: true, CommitDelay: commitDelay, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	return &daemonLoop{t: conntrack.NewTracker(cfg, journaledBackend{fw, j}), log: &capture.LogReader{}}, fw
}

// packets is a source of raw IP packets of one kind, a round of them at
// each Read; after the last round it ends the loop (io.EOF) if ends is
// set, and is otherwise empty.
type packets struct {
	name   string
	j      *journal
	kind   capture.Kind
	rounds [][][]byte
	ends   bool
	reads  int
	last   []*capture.Packet
}

func (s *packets) Fd() int      { return -1 }
func (s *packets) Close() error { return nil }

func (s *packets) Read(fn func(*capture.Packet)) error {
	s.last = s.last[:0]
	s.reads++
	if s.reads > len(s.rounds) {
		if s.ends {
			return io.EOF
		}
		return nil
	}
	for _, data := range s.rounds[s.reads-1] {
		p := &capture.Packet{Data: data, Link: capture.LinkTypeRawIP, Time: time.Now(), Kind: s.kind}
		s.last = append(s.last, p)
		fn(p)
	}
	return nil
}

// heldPackets are packets the kernel holds: Release journals their
// verdicts.
type heldPackets struct{ packets }

var verdictNames = map[capture.Verdict]string{capture.Accept: "accept", capture.Admit: "admit", capture.Retry: "retry"}

func (s *heldPackets) Release() error {
	if len(s.last) == 0 {
		return nil
	}
	var v []string
	for _, p := range s.last {
		v = append(v, verdictNames[p.Verdict])
	}
	s.j.add("release %s: %s", s.name, strings.Join(v, ","))
	return nil
}

// fakeProxy hands the loop a round of its events at each Read, as the
// control proxy does; Release journals what the bytes of the last Read
// went on as. Bytes acknowledge what has gone on of the other side, as
// the proxy's do: the tracker pairs a reply only with a command its
// server can have read.
type fakeProxy struct {
	j       *journal
	rounds  [][]*nat.Event
	reads   int
	last    []*nat.Event
	through [2]uint32 // by FromServer
}

func (p *fakeProxy) Fd() int               { return -1 }
func (p *fakeProxy) Close() error          { return nil }
func (p *fakeProxy) SharesProcessor() bool { return false }

func (p *fakeProxy) Read(fn func(*nat.Event)) {
	p.last = p.last[:0]
	if p.reads < len(p.rounds) {
		for _, ev := range p.rounds[p.reads] {
			if ev.Kind == nat.Bytes {
				ev.Ack = p.through[side(!ev.FromServer)]
			}
			p.last = append(p.last, ev)
			fn(ev)
		}
	}
	p.reads++
}

func (p *fakeProxy) Release() {
	for _, ev := range p.last {
		if ev.Kind == nat.Bytes {
			p.j.add("send on %q", ev.Out)
			p.through[side(ev.FromServer)] = ev.Through
		}
	}
}

func side(fromServer bool) int {
	if fromServer {
		return 1
	}
	return 0
}

// ipPacket is a raw IPv4 TCP segment, as NFLOG copies and NFQUEUE holds
// it.
func ipPacket(t *testing.T, src, dst string, seq, ack uint32, flags, payload string) []byte {
	t.Helper()
	s, d := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst)
	tcp := &layers.TCP{
		SrcPort: layers.TCPPort(s.Port()), DstPort: layers.TCPPort(d.Port()), Seq: seq, Ack: ack, Window: 502,
		SYN: strings.Contains(flags, "S"), ACK: strings.Contains(flags, "A"), PSH: payload != "",
	}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: s.Addr().AsSlice(), DstIP: d.Addr().AsSlice()}
	_ = tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, tcp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

const (
	client = "192.0.2.10:40000"
	server = "198.51.100.20:21"
	// The 227 of passiveSession announces it: 156*256+65.
	announced = "198.51.100.20:40001"
)

// passiveSession is the copies of a control session up to a 227.
func passiveSession(t *testing.T) [][]byte {
	var c, s uint32 = 1000, 5000
	out := [][]byte{
		ipPacket(t, client, server, c, 0, "S", ""),
		ipPacket(t, server, client, s, c+1, "SA", ""),
		ipPacket(t, client, server, c+1, s+1, "A", ""),
	}
	c, s = c+1, s+1
	for _, l := range []struct {
		fromClient bool
		text       string
	}{{false, "220 hello\r\n"}, {true, "PASV\r\n"}, {false, "227 Entering Passive Mode (198,51,100,20,156,65).\r\n"}} {
		if l.fromClient {
			out = append(out, ipPacket(t, client, server, c, s, "A", l.text))
			c += uint32(len(l.text))
		} else {
			out = append(out, ipPacket(t, server, client, s, c, "A", l.text))
			s += uint32(len(l.text))
		}
	}
	return out
}

func runLoop(t *testing.T, d *daemonLoop, sources ...capture.Source) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- capture.Run(context.Background(), d, sources...) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the loop did not end")
	}
}

// A held control SYN goes on only once its session's peers are in the
// kernel: the rest of the connection passes ftpgate's rules by them.
// Only the peers: pinholes queued with them keep their commit delay.
func TestDaemonLoopCommitsPeersBeforeAControlSYNGoesOn(t *testing.T) {
	j := &journal{}
	d, _ := newLoop(t, j, 0)
	queue := &heldPackets{packets{name: "queue", j: j, kind: capture.Held, rounds: [][][]byte{{ipPacket(t, client, server, 1000, 0, "S", "")}}}}
	end := &packets{name: "log", j: j, kind: capture.Copy, rounds: make([][][]byte, 1), ends: true}
	runLoop(t, d, queue, end)
	j.before(t, "commit peers: 1 peers", "release queue: accept")
	if slices.ContainsFunc(*j, func(e string) bool { return strings.HasPrefix(e, "commit:") }) {
		t.Errorf("a full commit for a control SYN: %q", *j)
	}
}

// Bytes of the control proxy go on only once what they opened is in the
// kernel, with no commit delay: the far side may connect the moment it
// reads them. Here the server's 200 to a PORT maps the public port it
// was given to the client.
func TestDaemonLoopCommitsBeforeProxiedBytesGoOn(t *testing.T) {
	j := &journal{}
	d, fw := newLoop(t, j, 0)
	tr := nat.Translation{
		Client: netip.MustParseAddrPort("192.0.2.2:40000"), Server: netip.MustParseAddrPort("203.0.113.10:21"),
		ServerSeen: netip.MustParseAddrPort("203.0.113.10:21"), ClientSeen: netip.MustParseAddrPort("203.0.113.1:51000"),
	}
	bytes := func(fromServer bool, text string) *nat.Event {
		return &nat.Event{Kind: nat.Bytes, ID: 7, FromServer: fromServer, Data: []byte(text), Time: time.Now()}
	}
	proxy := &fakeProxy{j: j, rounds: [][]*nat.Event{
		{{Kind: nat.Opened, ID: 7, Conn: tr, Time: time.Now()}, bytes(true, "220 hello\r\n")},
		{bytes(false, "PORT 192,0,2,2,156,64\r\n")},
		{bytes(true, "200 PORT command successful\r\n")},
	}}
	end := &packets{name: "log", j: j, kind: capture.Copy, rounds: make([][][]byte, 3), ends: true}
	runLoop(t, d, proxySource{controlProxy: proxy, loop: d}, end)
	j.before(t, "commit: 0 peers, 1 pinholes, 1 maps", `send on "200 PORT command successful\r\n"`)
	if len(fw.Maps) != 1 {
		t.Errorf("maps %v, want the public port mapped to the client", fw.Maps)
	}
}

// The tracker's decision on a held data SYN becomes its verdict: admit
// (the pinhole never reached the kernel: used up here), retry (it is in
// the kernel: its consume rule decides), or accept, on to the admin's
// rules, which drop it (no pinhole).
func TestDaemonLoopHeldSYNVerdicts(t *testing.T) {
	copies := passiveSession(t)
	for _, tc := range []struct {
		name string
		// commitDelay -1 commits after every round, so that the
		// pinhole is in the kernel before the SYN comes.
		commitDelay  time.Duration
		copies, syns [][][]byte
		want         string
	}{
		{"admit", 0, [][][]byte{copies}, [][][]byte{{ipPacket(t, "192.0.2.10:50000", announced, 7000, 0, "S", "")}}, "admit"},
		{"retry", -1, [][][]byte{copies}, [][][]byte{nil, {ipPacket(t, "192.0.2.10:50000", announced, 7000, 0, "S", "")}}, "retry"},
		{"no pinhole", 0, [][][]byte{copies}, [][][]byte{{ipPacket(t, "192.0.2.10:50000", "198.51.100.20:40002", 7000, 0, "S", "")}}, "accept"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := &journal{}
			d, _ := newLoop(t, j, tc.commitDelay)
			queue := &heldPackets{packets{name: "queue", j: j, kind: capture.Held, rounds: tc.syns}}
			log := &packets{name: "log", j: j, kind: capture.Copy, rounds: tc.copies}
			end := &packets{name: "end", j: j, kind: capture.Copy, rounds: make([][][]byte, len(tc.syns)), ends: true}
			runLoop(t, d, queue, log, end)
			if !slices.Contains(*j, "release queue: "+tc.want) {
				t.Errorf("want the SYN released with %s: %q", tc.want, *j)
			}
		})
	}
}
