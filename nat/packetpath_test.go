package nat

import (
	"bytes"
	"net/netip"
	"testing"
	"time"
)

// fakeUser rewrites "PORT a\r\n" to "PORT bbbb\r\n" (longer) from the
// client and "227 long text\r\n" to "227 x\r\n" (shorter) from the
// server, and records what it was given.
type fakeUser struct {
	opened, closed []uint64
	bytes          []string
	acks           []uint32
	refuse, end    bool
	noHelper       bool // the connection has no helper stub (the kernel cannot shift it)
}

func (f *fakeUser) Opened(id uint64, client, serverSeen netip.AddrPort, pickedUp bool) (bool, bool) {
	f.opened = append(f.opened, id)
	return !f.refuse, !f.noHelper
}

func (f *fakeUser) Bytes(id uint64, fromServer bool, seq uint32, data []byte, ack uint32) ([]byte, bool) {
	f.bytes = append(f.bytes, string(data))
	f.acks = append(f.acks, ack)
	if f.end {
		return nil, true
	}
	out := bytes.ReplaceAll(data, []byte("PORT a\r\n"), []byte("PORT bbbb\r\n"))
	return bytes.ReplaceAll(out, []byte("227 long text\r\n"), []byte("227 x\r\n")), false
}

func (f *fakeUser) Closed(id uint64, reason string) { f.closed = append(f.closed, id) }

// pathLab drives one connection through a PacketPath: client
// 192.0.2.10:40000 to server 198.51.100.2:21, ISNs 1000 (client) and
// 5000 (server).
type pathLab struct {
	t    *testing.T
	p    *PacketPath
	user *fakeUser
	gone []netip.AddrPort
	now  time.Time
}

func newPathLab(t *testing.T) *pathLab {
	l := &pathLab{t: t, user: &fakeUser{}, now: time.Unix(1000, 0)}
	l.p = NewPacketPath(l.user, PacketPathConfig{MaxConns: 10, MaxPerSource: 10}, func(c, _ netip.AddrPort, _ bool) { l.gone = append(l.gone, c) })
	return l
}

var (
	labClient = netip.MustParseAddr("192.0.2.10")
	labServer = netip.MustParseAddr("198.51.100.2")
)

// handshake passes the server's SYN-ACK and the client's ACK of it,
// which makes the connection followed.
func (l *pathLab) handshake() {
	l.t.Helper()
	l.send(false, tcpSeg{seq: 5000, ack: 1001, acked: true, syn: true})
	l.send(true, tcpSeg{seq: 1001, ack: 5001, acked: true})
}

// send passes one segment and returns the verdict and what went on.
func (l *pathLab) send(fromClient bool, s tcpSeg) (PacketVerdict, Segment) {
	l.t.Helper()
	s.src, s.dst = labClient, labServer
	if !fromClient {
		s.src, s.dst, s.sport, s.dport = labServer, labClient, 21, 40000
	}
	pkt := s.build(l.t)
	out, v := l.p.Segment(nil, pkt, fromClient, l.now)
	if v == PassAsIs {
		out = pkt
	}
	seg, err := ParseSegment(out)
	if v != DropSegment && err != nil {
		l.t.Fatalf("what went on does not parse: %v", err)
	}
	return v, seg
}

func TestPacketPathStream(t *testing.T) {
	l := newPathLab(t)
	// SYN-ACK from the server starts it, half-open; the client's ACK
	// of it makes it followed. Nothing shifted yet.
	if v, _ := l.send(false, tcpSeg{seq: 5000, ack: 1001, acked: true, syn: true}); v != PassAsIs {
		t.Fatalf("SYN-ACK: verdict %d", v)
	}
	if len(l.user.opened) != 0 {
		t.Fatalf("opened on the SYN-ACK alone: %v", l.user.opened)
	}
	if v, _ := l.send(true, tcpSeg{seq: 1001, ack: 5001, acked: true}); v != PassAsIs || len(l.user.opened) != 1 {
		t.Fatalf("client's ACK: verdict %d, opened %v", v, l.user.opened)
	}
	// The greeting, untouched: as it came.
	if v, _ := l.send(false, tcpSeg{seq: 5001, ack: 1001, acked: true, payload: []byte("220 hi\r\n")}); v != PassAsIs {
		t.Fatalf("greeting: verdict %d", v)
	}
	// PORT grows by 3.
	v, seg := l.send(true, tcpSeg{seq: 1001, ack: 5009, acked: true, payload: []byte("PORT a\r\n")})
	if v != PassReplaced || string(seg.Payload()) != "PORT bbbb\r\n" || seg.Seq != 1001 {
		t.Fatalf("PORT: verdict %d, %q at %d", v, seg.Payload(), seg.Seq)
	}
	// Sent again before the server acknowledged it: rewritten the same;
	// with other bytes at its place: dropped (the stream must stay one).
	v, seg = l.send(true, tcpSeg{seq: 1001, ack: 5009, acked: true, payload: []byte("PORT a\r\n")})
	if v != PassReplaced || string(seg.Payload()) != "PORT bbbb\r\n" || seg.Seq != 1001 {
		t.Fatalf("retransmitted PORT: verdict %d, %q at %d", v, seg.Payload(), seg.Seq)
	}
	if v, _ := l.send(true, tcpSeg{seq: 1001, ack: 5009, acked: true, payload: []byte("PASV\r\n")}); v != DropSegment {
		t.Fatalf("other bytes in place of the PORT: verdict %d", v)
	}
	// The server acks the rewritten line (1001+11): the client sees its own 1009.
	_, seg = l.send(false, tcpSeg{seq: 5009, ack: 1012, acked: true, payload: []byte("227 long text\r\n")})
	if seg.Ack != 1009 || string(seg.Payload()) != "227 x\r\n" {
		t.Fatalf("server's reply: ack %d payload %q", seg.Ack, seg.Payload())
	}
	if got := l.user.acks[len(l.user.acks)-1]; got != 1009 {
		t.Errorf("the user got the server's ack as %d, want the client's own 1009", got)
	}
	// The client's next line is shifted by 3; its ack of the shrunk
	// reply (5009+7) comes back as the server's 5024.
	_, seg = l.send(true, tcpSeg{seq: 1009, ack: 5016, acked: true, payload: []byte("RETR f\r\n"), sack: [][2]uint32{{5016, 5020}}})
	if seg.Seq != 1012 || seg.Ack != 5024 {
		t.Fatalf("next line: seq %d ack %d, want 1012 5024", seg.Seq, seg.Ack)
	}
	// Once acknowledged, the PORT's bytes are the server's: a copy goes
	// on as it came (shifted), for the server to ignore.
	if v, seg = l.send(true, tcpSeg{seq: 1001, ack: 5009, acked: true, payload: []byte("PORT a\r\n")}); v == DropSegment || seg.Seq != 1001 {
		t.Fatalf("acknowledged PORT sent again: verdict %d at %d", v, seg.Seq)
	}
	// After a gap: dropped.
	if v, _ := l.send(true, tcpSeg{seq: 1100, ack: 5016, acked: true, payload: []byte("QUIT\r\n")}); v != DropSegment {
		t.Fatalf("after a gap: verdict %d", v)
	}
	// A retransmission merged across a rewritten line not yet
	// acknowledged has the rewrite done again, whole; cutting into it, it
	// cannot go on.
	_, seg = l.send(true, tcpSeg{seq: 1017, ack: 5016, acked: true, payload: []byte("PORT a\r\n")})
	if string(seg.Payload()) != "PORT bbbb\r\n" || seg.Seq != 1020 {
		t.Fatalf("second PORT: %q at %d", seg.Payload(), seg.Seq)
	}
	if v, seg := l.send(true, tcpSeg{seq: 1017, ack: 5016, acked: true, payload: []byte("PORT a\r\nLIST\r\n")}); v != PassReplaced || string(seg.Payload()) != "PORT bbbb\r\nLIST\r\n" {
		t.Fatalf("merged retransmission: verdict %d, %q", v, seg.Payload())
	}
	if v, _ := l.send(true, tcpSeg{seq: 1020, ack: 5016, acked: true, payload: []byte("T a\r\n")}); v != DropSegment {
		t.Fatalf("a retransmission cutting into a rewrite: verdict %d", v)
	}
	if n := len(l.user.bytes); l.user.bytes[n-1] != "LIST\r\n" {
		t.Fatalf("the merged retransmission's new bytes: user got %q", l.user.bytes[n-1])
	}
	// FINs both ways: the user is told; the connection lingers for the
	// last acknowledgements, then is forgotten.
	l.send(true, tcpSeg{seq: 1031, ack: 5016, acked: true, fin: true})
	l.send(false, tcpSeg{seq: 5024, ack: 1038, acked: true, fin: true})
	if len(l.user.closed) != 1 || len(l.gone) != 0 {
		t.Fatalf("after FINs: closed %v gone %v", l.user.closed, l.gone)
	}
	_, seg = l.send(true, tcpSeg{seq: 1032, ack: 5017, acked: true})
	if seg.Seq != 1038 || seg.Ack != 5025 {
		t.Fatalf("last ack: seq %d ack %d, want 1038 5025", seg.Seq, seg.Ack)
	}
	l.now = l.now.Add(linger + time.Second)
	l.p.Sweep(l.now)
	if l.p.Len() != 0 || len(l.gone) != 1 || l.gone[0].Addr() != labClient {
		t.Fatalf("after the linger: %d followed, gone %v", l.p.Len(), l.gone)
	}
}

func TestPacketPathCut(t *testing.T) {
	l := newPathLab(t)
	l.handshake()
	l.send(true, tcpSeg{seq: 1001, ack: 5001, acked: true, payload: []byte("PORT a\r\n")})
	l.p.Forget(l.user.opened[0])
	for _, fromClient := range []bool{true, false} {
		if v, _ := l.send(fromClient, tcpSeg{seq: 1012, ack: 5001, acked: true, payload: []byte("x\r\n")}); v != DropSegment {
			t.Errorf("after Forget, from client %v: verdict %d, want drop", fromClient, v)
		}
	}
	// A session the user ends on its bytes is cut the same.
	l2 := newPathLab(t)
	l2.user.end = true
	l2.handshake()
	if v, _ := l2.send(true, tcpSeg{seq: 1001, ack: 5001, acked: true, payload: []byte("USER x\r\n")}); v != DropSegment {
		t.Fatalf("closed by the user: verdict %d", v)
	}
	if v, _ := l2.send(false, tcpSeg{seq: 5001, ack: 1001, acked: true, payload: []byte("220 x\r\n")}); v != DropSegment {
		t.Fatalf("after the user closed it: verdict %d", v)
	}
	// A refused one goes on as it comes, unread.
	l3 := newPathLab(t)
	l3.user.refuse = true
	l3.handshake()
	if v, seg := l3.send(true, tcpSeg{seq: 1001, ack: 5001, acked: true, payload: []byte("PORT a\r\n")}); v != PassAsIs || string(seg.Payload()) != "PORT a\r\n" || len(l3.user.bytes) != 0 {
		t.Fatalf("refused: verdict %d payload %q, user read %q", v, seg.Payload(), l3.user.bytes)
	}
	if len(l3.gone) == 0 || l3.p.Len() != 0 {
		t.Fatalf("refused: not given up (gone %v, %d followed)", l3.gone, l3.p.Len())
	}
}

// TestPacketPathBounded: no more than MaxConns connections are
// followed, no more than MaxPerSource of one client; those beyond are
// given up (gone) and go on as they come; a pure ACK of an unknown
// connection opens none.
func TestPacketPathBounded(t *testing.T) {
	user := &fakeUser{}
	var gone int
	p := NewPacketPath(user, PacketPathConfig{MaxConns: 5, MaxPerSource: 3}, func(netip.AddrPort, netip.AddrPort, bool) { gone++ })
	for i := range 10 {
		s := tcpSeg{src: labClient, dst: labServer, sport: uint16(40000 + i), dport: 21, seq: 1, ack: 1, acked: true, payload: []byte("x")}
		if _, v := p.Segment(nil, s.build(t), true, time.Now()); i >= 3 && v != PassAsIs {
			t.Errorf("connection %d beyond the share: verdict %d", i, v)
		}
	}
	if p.Len() != 3 || len(user.opened) != 3 || gone != 7 {
		t.Fatalf("one client: %d followed, %d opened, %d given up; want 3, 3, 7", p.Len(), len(user.opened), gone)
	}
	for i := range 5 {
		s := tcpSeg{src: netip.AddrFrom4([4]byte{192, 0, 2, byte(20 + i)}), dst: labServer, sport: 40000, dport: 21, seq: 1, ack: 1, acked: true, payload: []byte("x")}
		p.Segment(nil, s.build(t), true, time.Now())
	}
	if p.Len() != 5 {
		t.Fatalf("%d followed, want MaxConns 5", p.Len())
	}
	s := tcpSeg{src: netip.MustParseAddr("192.0.2.99"), dst: labServer, sport: 50000, dport: 21, seq: 1, ack: 1, acked: true}
	p.Segment(nil, s.build(t), true, time.Now())
	if p.Len() != 5 || len(user.opened) != 5 {
		t.Fatalf("a pure ACK: %d followed, %d opened", p.Len(), len(user.opened))
	}
}

// TestPacketPathBadChecksum: a segment with a wrong checksum (queued
// before conntrack, forged or broken) is dropped unread.
func TestPacketPathBadChecksum(t *testing.T) {
	l := newPathLab(t)
	l.handshake()
	pkt := tcpSeg{src: labClient, dst: labServer, seq: 1001, ack: 5001, acked: true, payload: []byte("PORT a\r\n")}.build(t)
	pkt[len(pkt)-3] ^= 0x20 // a letter's case: the sum is off
	if _, v := l.p.Segment(nil, pkt, true, l.now); v != DropSegment {
		t.Fatalf("bad checksum: verdict %d", v)
	}
	if len(l.user.bytes) != 0 || l.p.Stats().Unfit != 1 {
		t.Fatalf("bad checksum read: %q, stats %+v", l.user.bytes, l.p.Stats())
	}
}

// TestPacketPathRestore: connections written to a state file and read
// back by a new PacketPath (a restart) go on: a shifted one with the
// same shift, its retransmitted rewrite rewritten the same, its session
// picked up; one never shifted is followed again (RestoredUnshifted).
func TestPacketPathRestore(t *testing.T) {
	l := newPathLab(t)
	l.handshake()
	l.send(true, tcpSeg{seq: 1001, ack: 5001, acked: true, payload: []byte("PORT a\r\n")})
	// A second connection, never shifted.
	other := tcpSeg{src: netip.MustParseAddr("192.0.2.11"), dst: labServer, seq: 1, ack: 1, acked: true, payload: []byte("NOOP\r\n")}
	l.p.Segment(nil, other.build(t), true, l.now)
	if !l.p.SaveDue(l.now) {
		t.Fatal("a rewrite did not make the state due")
	}
	path := t.TempDir() + "/state.json"
	sf, err := OpenStateFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := sf.Write(l.p.Snapshot(l.now, true)); err != nil {
		t.Fatal(err)
	}
	sf.Close()
	if l.p.SaveDue(l.now) {
		t.Fatal("due after Snapshot")
	}
	if kept := l.p.Stop(); kept != 1 || len(l.gone) != 0 {
		t.Fatalf("Stop: %d must stay, gave up %v; want the shifted one, none given up", kept, l.gone)
	}

	st, err := ReadState(path)
	if err != nil {
		t.Fatal(err)
	}
	l2 := newPathLab(t)
	if n, err := l2.p.Restore(st, l2.now); n != 2 || err != nil {
		t.Fatalf("Restore: %d, %v; want both", n, err)
	}
	// The one never shifted must be queued again: its element went with
	// the last ftpgate's table.
	if rs := l2.p.RestoredUnshifted(); len(rs) != 1 || rs[0].Client.Addr() != other.src {
		t.Fatalf("restored unshifted: %v, want %s", rs, other.src)
	}
	// The PORT sent again, not yet acknowledged: rewritten as before.
	v, seg := l2.send(true, tcpSeg{seq: 1001, ack: 5001, acked: true, payload: []byte("PORT a\r\n")})
	if v != PassReplaced || string(seg.Payload()) != "PORT bbbb\r\n" {
		t.Fatalf("retransmitted rewrite after the restart: verdict %d, %q", v, seg.Payload())
	}
	// The server's ack of the rewritten line comes back unshifted for the
	// client; the client's next line is shifted by 3.
	_, seg = l2.send(false, tcpSeg{seq: 5001, ack: 1012, acked: true, payload: []byte("200 ok\r\n")})
	if seg.Ack != 1009 {
		t.Fatalf("after the restart: the server's ack went on as %d, want 1009", seg.Ack)
	}
	if len(l2.user.opened) != 1 {
		t.Fatalf("session not picked up: opened %v", l2.user.opened)
	}
	_, seg = l2.send(true, tcpSeg{seq: 1009, ack: 5009, acked: true, payload: []byte("RETR f\r\n")})
	if seg.Seq != 1012 {
		t.Fatalf("after the restart: next line at %d, want 1012", seg.Seq)
	}

	// Written at a rewrite (then kill -9), the streams have moved on:
	// they are picked up where the next segments say.
	l3 := newPathLab(t)
	st.Clean = false
	l3.p.Restore(st, l3.now)
	_, seg = l3.send(true, tcpSeg{seq: 1100, ack: 5101, acked: true, payload: []byte("TYPE I\r\n")})
	if seg.Seq != 1103 || len(l3.user.bytes) != 1 {
		t.Fatalf("restored from a rewrite's state: next line at %d (want 1103), user read %q", seg.Seq, l3.user.bytes)
	}
	// Written in place: a shorter state over a longer one reads as the
	// shorter.
	w, err := OpenStateFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(PacketState{Version: packetStateVersion, Clean: true}); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if st, err := ReadState(path); err != nil || len(st.Conns) != 0 || !st.Clean {
		t.Fatalf("in place: %v, %d conns, clean %v", err, len(st.Conns), st.Clean)
	}
	// A missing file is an empty state; a broken one an error.
	if st, err := ReadState(t.TempDir() + "/none"); err != nil || len(st.Conns) != 0 {
		t.Fatalf("missing file: %v, %d conns", err, len(st.Conns))
	}
}

// TestPacketPathBlindAttacks: what a host that cannot see the traffic
// sends on a client's behalf (the client's side is queued before
// conntrack) neither ends nor desynchronises the connection, and none of
// it is read: a reset or a SYN at a guessed sequence number, data
// without an acknowledgement, data acknowledging what the server never
// sent, a segment whose TTL ends at the gateway.
func TestPacketPathBlindAttacks(t *testing.T) {
	l := newPathLab(t)
	l.handshake()
	l.send(true, tcpSeg{seq: 1001, ack: 5001, acked: true, payload: []byte("PORT a\r\n")}) // shifted by 3
	read := len(l.user.bytes)
	for name, s := range map[string]tcpSeg{
		"blind RST":           {seq: 77777, ack: 5001, acked: true, rst: true},
		"SYN with data":       {seq: 1009, ack: 5001, acked: true, syn: true, payload: []byte("PASV\r\n")},
		"data without ACK":    {seq: 1009, payload: []byte("PASV\r\n")},
		"ack of the future":   {seq: 1009, ack: 9000, acked: true, payload: []byte("PASV\r\n")},
		"TTL ends at gateway": {seq: 1009, ack: 5001, acked: true, payload: []byte("PASV\r\n"), ttl: 1},
	} {
		l.send(true, s)
		if l.p.Len() != 1 || len(l.user.closed) != 0 {
			t.Fatalf("%s ended the connection", name)
		}
		if len(l.user.bytes) != read {
			t.Fatalf("%s was read: %q", name, l.user.bytes[read:])
		}
	}
	// The real next line is still at 1009, shifted as before.
	_, seg := l.send(true, tcpSeg{seq: 1009, ack: 5001, acked: true, payload: []byte("NOOP\r\n")})
	if seg.Seq != 1012 || len(l.user.bytes) != read+1 {
		t.Fatalf("after the attacks: next line at %d (want 1012), read %q", seg.Seq, l.user.bytes[read:])
	}
	// A reset at the expected number ends it.
	l.send(true, tcpSeg{seq: 1015, ack: 5001, acked: true, rst: true})
	if l.p.Len() != 0 {
		t.Fatal("an exact reset did not end the connection")
	}
}

// TestPacketPathSpoofedSYN: the server's SYN-ACK to a client that never
// sent the SYN (a spoofed source) opens no session and takes no share;
// half-open connections are bounded and go after the handshake timeout.
func TestPacketPathSpoofedSYN(t *testing.T) {
	user := &fakeUser{}
	var gone int
	p := NewPacketPath(user, PacketPathConfig{MaxConns: 8, MaxPerSource: 8}, func(netip.AddrPort, netip.AddrPort, bool) { gone++ })
	now := time.Unix(1000, 0)
	for i := range 5 {
		s := tcpSeg{src: labServer, dst: netip.AddrFrom4([4]byte{192, 0, 2, byte(50 + i)}), sport: 21, dport: 40000, seq: 5000, ack: 1001, acked: true, syn: true}
		p.Segment(nil, s.build(t), false, now)
	}
	if len(user.opened) != 0 || p.Len() != 2 || gone != 3 {
		t.Fatalf("spoofed SYN-ACKs: %d sessions opened, %d followed, %d given up; want 0, 2 (a quarter of MaxConns), 3", len(user.opened), p.Len(), gone)
	}
	p.Sweep(now.Add(handshakeTimeout + time.Second))
	if p.Len() != 0 || gone != 5 {
		t.Fatalf("after the handshake timeout: %d followed, %d given up", p.Len(), gone)
	}
}

// FuzzPacketPathSegments drives one connection with segments whose
// numbers, flags and bytes the fuzzer picks, both ways: no panic, what
// goes on parses with right checksums, and what is kept stays bounded.
func FuzzPacketPathSegments(f *testing.F) {
	f.Add([]byte("\x00\x01PORT a\r\n\x01\x02227 long text\r\n\x00\x00PORT a\r\n"), uint32(1001), uint32(5001), false)
	f.Add([]byte("\x01\x08220 hi\r\n\x00\x01PORT a\r\n\x01\x02227 long text\r\n\x00\x00PORT a\r\n"), uint32(1001), uint32(5001), true)
	f.Fuzz(func(t *testing.T, script []byte, seq0, ack0 uint32, kernel bool) {
		user := &fakeUser{}
		p := NewPacketPath(user, PacketPathConfig{MaxConns: 4, MaxPerSource: 4, KernelShifts: kernel}, func(netip.AddrPort, netip.AddrPort, bool) {})
		now := time.Unix(1000, 0)
		seq := [2]uint32{seq0, ack0}
		syn := tcpSeg{src: labServer, dst: labClient, sport: 21, dport: 40000, seq: seq[1] - 1, ack: seq[0], acked: true, syn: true}
		p.Segment(nil, syn.build(t), false, now)
		for len(script) >= 2 {
			d, flags, n := int(script[0]&1), script[0]>>1, int(script[1]%32)
			script = script[2:]
			n = min(n, len(script))
			s := tcpSeg{src: labClient, dst: labServer, seq: seq[d] + uint32(flags&3) - 1, ack: seq[1-d], acked: flags&4 == 0,
				rst: flags&8 != 0 && flags&16 != 0, fin: flags&32 != 0, payload: script[:n]}
			if d == 1 {
				s.src, s.dst, s.sport, s.dport = labServer, labClient, 21, 40000
			}
			script = script[n:]
			out, v := p.Segment(nil, s.build(t), d == 0, now)
			if v == PassReplaced || v == PassKernelShifts {
				seg, err := ParseSegment(out)
				if err != nil || !seg.ChecksumOK() {
					t.Fatalf("what went on: %v, checksum ok %v", err, err == nil && seg.ChecksumOK())
				}
			}
			seq[d] += uint32(n)
			now = now.Add(time.Second)
		}
		for _, c := range p.conns {
			for d := range 2 {
				if len(c.sent[d]) > maxUnacked || len(c.rewrites[d]) > maxRewriteRecords || len(c.shift.adj[d].corr) > MaxCorrections {
					t.Fatalf("unbounded: %d sent, %d rewrites, %d corrections", len(c.sent[d]), len(c.rewrites[d]), len(c.shift.adj[d].corr))
				}
			}
		}
	})
}

// TestPacketPathKernelShifts is the stream above where the kernel shifts
// (the NFQUEUE glue): only segments with data, SYN, FIN or RST come; the
// server's first data completes the handshake; a rewrite goes on with
// its own numbers and the verdict that has the kernel shift; later
// segments go on as they come, in the kernel's hands; acknowledgements
// are still read in the other side's own numbers.
func TestPacketPathKernelShifts(t *testing.T) {
	l := newPathLab(t)
	l.p = NewPacketPath(l.user, PacketPathConfig{MaxConns: 10, MaxPerSource: 10, KernelShifts: true}, func(c, _ netip.AddrPort, shifted bool) {
		if shifted {
			t.Errorf("a connection the kernel shifts forgotten as shifted by ftpgate")
		}
		l.gone = append(l.gone, c)
	})
	shifts := 0
	l.p.OnShift = func(_, _ netip.AddrPort) { shifts++ }
	if v, _ := l.send(false, tcpSeg{seq: 5000, ack: 1001, acked: true, syn: true}); v != PassAsIs {
		t.Fatalf("SYN-ACK: verdict %d", v)
	}
	// Data acknowledging anything but the client's SYN does not make it
	// followed; the server's greeting that does, does.
	if v, _ := l.send(false, tcpSeg{seq: 5001, ack: 1500, acked: true, payload: []byte("220 hi\r\n")}); v != PassAsIs || len(l.user.opened) != 0 {
		t.Fatalf("greeting acknowledging the future: verdict %d, opened %v", v, l.user.opened)
	}
	if v, _ := l.send(false, tcpSeg{seq: 5001, ack: 1001, acked: true, payload: []byte("220 hi\r\n")}); v != PassAsIs || len(l.user.opened) != 1 {
		t.Fatalf("greeting: verdict %d, opened %v", v, l.user.opened)
	}
	if len(l.user.bytes) != 1 || l.user.bytes[0] != "220 hi\r\n" {
		t.Fatalf("the user got %q, want the greeting", l.user.bytes)
	}
	// PORT grows by 3, at its own sequence number; the verdict has the
	// kernel shift what follows.
	v, seg := l.send(true, tcpSeg{seq: 1001, ack: 5009, acked: true, payload: []byte("PORT a\r\n")})
	if v != PassKernelShifts || string(seg.Payload()) != "PORT bbbb\r\n" || seg.Seq != 1001 || seg.Ack != 5009 {
		t.Fatalf("PORT: verdict %d, %q at %d ack %d", v, seg.Payload(), seg.Seq, seg.Ack)
	}
	if !seg.ChecksumOK() {
		t.Fatal("the rewritten PORT's checksums are wrong")
	}
	// The server's reply acknowledges the client's bytes as shifted by
	// the kernel (1001+11): read as the client's own 1009, and the
	// segment goes on as it came but for its rewrite (shrunk by 8).
	v, seg = l.send(false, tcpSeg{seq: 5009, ack: 1012, acked: true, payload: []byte("227 long text\r\n")})
	if v != PassKernelShifts || seg.Ack != 1012 || seg.Seq != 5009 || string(seg.Payload()) != "227 x\r\n" {
		t.Fatalf("server's reply: verdict %d seq %d ack %d payload %q", v, seg.Seq, seg.Ack, seg.Payload())
	}
	if got := l.user.acks[len(l.user.acks)-1]; got != 1009 {
		t.Errorf("the user got the server's ack as %d, want the client's own 1009", got)
	}
	// The client's next line, not rewritten: as it came, its numbers the
	// kernel's business. Acknowledging more than the server sent (its
	// 5024 is 5016 as the client sees it): dropped.
	if v, _ := l.send(true, tcpSeg{seq: 1009, ack: 5016, acked: true, payload: []byte("RETR f\r\n")}); v != PassAsIs {
		t.Fatalf("next line: verdict %d, want as it came", v)
	}
	if v, _ := l.send(true, tcpSeg{seq: 1017, ack: 5017, acked: true, payload: []byte("QUIT\r\n")}); v != DropSegment {
		t.Fatalf("a line acknowledging the future: verdict %d", v)
	}
	if shifts != 0 || l.p.Stop() != 0 {
		t.Errorf("ftpgate counts itself shifting a connection the kernel shifts: OnShift %d, Stop %d", shifts, l.p.Stop())
	}
	// Carried over a restart as the kernel's.
	st := l.p.Snapshot(l.now, true)
	if len(st.Conns) != 1 || !st.Conns[0].Kernel {
		t.Fatalf("state: %+v", st.Conns)
	}
	again := NewPacketPath(&fakeUser{}, PacketPathConfig{MaxConns: 10, MaxPerSource: 10}, func(_, _ netip.AddrPort, _ bool) {})
	if _, err := again.Restore(st, l.now); err != nil {
		t.Fatal(err)
	}
	if rs := again.RestoredUnshifted(); len(rs) != 0 {
		t.Errorf("a connection the kernel shifts restored where ftpgate shifts: %v", rs)
	}
	again = NewPacketPath(&fakeUser{}, PacketPathConfig{MaxConns: 10, MaxPerSource: 10, KernelShifts: true}, func(_, _ netip.AddrPort, _ bool) {})
	if _, err := again.Restore(st, l.now); err != nil {
		t.Fatal(err)
	}
	if rs := again.RestoredUnshifted(); len(rs) != 1 || !rs[0].Kernel {
		t.Errorf("restored connection the kernel shifts not queued again as such: %v", rs)
	}
}

// TestPacketPathKernelShiftsLongReply: where the kernel shifts, the
// client's bare acknowledgements are not queued, so a reply longer than
// what ftpgate keeps unacknowledged (a long STAT) must still go on; a
// retransmission reaching back to what it no longer keeps is dropped,
// until the client's data acknowledges it.
func TestPacketPathKernelShiftsLongReply(t *testing.T) {
	l := newPathLab(t)
	l.p = NewPacketPath(l.user, PacketPathConfig{MaxConns: 10, MaxPerSource: 10, KernelShifts: true}, func(_, _ netip.AddrPort, _ bool) {})
	l.send(false, tcpSeg{seq: 5000, ack: 1001, acked: true, syn: true})
	if v, _ := l.send(false, tcpSeg{seq: 5001, ack: 1001, acked: true, payload: []byte("220 hi\r\n")}); v != PassAsIs || len(l.user.opened) != 1 {
		t.Fatalf("greeting: verdict %d, opened %v", v, l.user.opened)
	}
	l.send(true, tcpSeg{seq: 1001, ack: 5009, acked: true, payload: []byte("STAT /\r\n")})
	line := bytes.Repeat([]byte("x"), 998)
	line = append(line, '\r', '\n')
	seq := uint32(5009)
	for i := range 40 { // 40,000 bytes, no acknowledgement queued
		if v, _ := l.send(false, tcpSeg{seq: seq, ack: 1009, acked: true, payload: line}); v != PassAsIs {
			t.Fatalf("segment %d of the long reply: verdict %d", i, v)
		}
		seq += uint32(len(line))
	}
	if v, _ := l.send(false, tcpSeg{seq: 5009, ack: 1009, acked: true, payload: line}); v != DropSegment {
		t.Errorf("a retransmission of bytes no longer kept: verdict %d, want dropped", v)
	}
	// The client's next command acknowledges all of it.
	l.send(true, tcpSeg{seq: 1009, ack: seq, acked: true, payload: []byte("NOOP\r\n")})
	if v, _ := l.send(false, tcpSeg{seq: 5009, ack: 1015, acked: true, payload: line}); v == DropSegment {
		t.Errorf("a copy of acknowledged bytes: dropped")
	}
	// Where ftpgate shifts it sees every acknowledgement: beyond what it
	// keeps a sender waits (the existing behaviour, unchanged).
	l2 := newPathLab(t)
	l2.handshake()
	l2.send(false, tcpSeg{seq: 5001, ack: 1001, acked: true, payload: []byte("220 hi\r\n")})
	seq, dropped := uint32(5009), false
	for range 40 {
		if v, _ := l2.send(false, tcpSeg{seq: seq, ack: 1001, acked: true, payload: line}); v == DropSegment {
			dropped = true
			break
		}
		seq += uint32(len(line))
	}
	if !dropped {
		t.Error("ftpgate's own shift kept more than 16 KiB unacknowledged")
	}
}

// TestPacketPathKernelShiftsOneCorrection: the kernel keeps one
// correction per direction, so while a rewrite that changed a length is
// unacknowledged no new bytes of that side go on (a retransmission
// merged with them goes on cut to the rewrite), and a copy of bytes
// from before the last correction but one is dropped.
func TestPacketPathKernelShiftsOneCorrection(t *testing.T) {
	l := newPathLab(t)
	l.p = NewPacketPath(l.user, PacketPathConfig{MaxConns: 10, MaxPerSource: 10, KernelShifts: true}, func(_, _ netip.AddrPort, _ bool) {})
	l.send(false, tcpSeg{seq: 5000, ack: 1001, acked: true, syn: true})
	l.send(false, tcpSeg{seq: 5001, ack: 1001, acked: true, payload: []byte("220 hi\r\n")})
	if v, _ := l.send(true, tcpSeg{seq: 1001, ack: 5009, acked: true, payload: []byte("PORT a\r\n")}); v != PassKernelShifts {
		t.Fatalf("PORT: verdict %d", v)
	}
	// Pipelined before the server acknowledged the PORT: waits.
	if v, _ := l.send(true, tcpSeg{seq: 1009, ack: 5009, acked: true, payload: []byte("PORT a\r\n")}); v != DropSegment {
		t.Fatalf("a second line while the first rewrite is unacknowledged: verdict %d, want dropped", v)
	}
	// The PORT sent again merged with the next line: only the PORT,
	// rewritten, goes on, and not as a new correction.
	v, seg := l.send(true, tcpSeg{seq: 1001, ack: 5009, acked: true, payload: []byte("PORT a\r\nPORT a\r\n")})
	if v != PassReplaced || string(seg.Payload()) != "PORT bbbb\r\n" || seg.Seq != 1001 {
		t.Fatalf("merged retransmission: verdict %d, %q at %d", v, seg.Payload(), seg.Seq)
	}
	// The server acknowledges the rewrite (1001+11, as the kernel
	// shifted it); the second line goes on, rewritten: a second
	// correction.
	l.send(false, tcpSeg{seq: 5009, ack: 1012, acked: true, payload: []byte("200 ok\r\n")})
	if v, seg := l.send(true, tcpSeg{seq: 1009, ack: 5017, acked: true, payload: []byte("PORT a\r\n")}); v != PassKernelShifts || string(seg.Payload()) != "PORT bbbb\r\n" {
		t.Fatalf("the second line once the first is acknowledged: verdict %d %q", v, seg.Payload())
	}
	// A copy of the first (acknowledged) line: the kernel would shift it
	// by the second's offset before it: dropped.
	if v, _ := l.send(true, tcpSeg{seq: 1001, ack: 5017, acked: true, payload: []byte("PORT a\r\n")}); v != DropSegment {
		t.Errorf("a copy from before the last correction but one: verdict %d, want dropped", v)
	}
}

// TestPacketPathKernelShiftsWithoutHelper: a connection that did not get
// the helper stub before its NAT (a port forward from another port)
// cannot be shifted by the kernel: ftpgate shifts it, and has it queued
// as the connections it shifts are (OnShift) from the start.
func TestPacketPathKernelShiftsWithoutHelper(t *testing.T) {
	l := newPathLab(t)
	l.user.noHelper = true
	l.p = NewPacketPath(l.user, PacketPathConfig{MaxConns: 10, MaxPerSource: 10, KernelShifts: true}, func(_, _ netip.AddrPort, _ bool) {})
	moved := 0
	l.p.OnShift = func(_, _ netip.AddrPort) { moved++ }
	l.send(false, tcpSeg{seq: 5000, ack: 1001, acked: true, syn: true})
	l.send(false, tcpSeg{seq: 5001, ack: 1001, acked: true, payload: []byte("220 hi\r\n")})
	if moved != 1 {
		t.Fatalf("moved to ftpgate's own shift %d times at the start, want 1", moved)
	}
	if v, seg := l.send(true, tcpSeg{seq: 1001, ack: 5009, acked: true, payload: []byte("PORT a\r\n")}); v != PassReplaced || string(seg.Payload()) != "PORT bbbb\r\n" {
		t.Fatalf("PORT: verdict %d %q, want ftpgate's rewrite", v, seg.Payload())
	}
	// Shifted by ftpgate: the next segment's numbers move.
	if v, seg := l.send(true, tcpSeg{seq: 1009, ack: 5009, acked: true, payload: []byte("NOOP\r\n")}); v != PassReplaced || seg.Seq != 1012 {
		t.Fatalf("next line: verdict %d at %d, want shifted to 1012", v, seg.Seq)
	}
}

// TestPacketPathKernelShiftsRestoredRewrite: a rewrite carried over a
// restart, whose acknowledgement the new ftpgate may never see, holds
// nothing back (the client's next line goes on).
func TestPacketPathKernelShiftsRestoredRewrite(t *testing.T) {
	l := newPathLab(t)
	l.p = NewPacketPath(l.user, PacketPathConfig{MaxConns: 10, MaxPerSource: 10, KernelShifts: true}, func(_, _ netip.AddrPort, _ bool) {})
	l.send(false, tcpSeg{seq: 5000, ack: 1001, acked: true, syn: true})
	l.send(false, tcpSeg{seq: 5001, ack: 1001, acked: true, payload: []byte("220 hi\r\n")})
	l.send(true, tcpSeg{seq: 1001, ack: 5009, acked: true, payload: []byte("PORT a\r\n")})
	st := l.p.Snapshot(l.now, false) // kill -9 after the rewrite
	l2 := newPathLab(t)
	l2.p = NewPacketPath(l2.user, PacketPathConfig{MaxConns: 10, MaxPerSource: 10, KernelShifts: true}, func(_, _ netip.AddrPort, _ bool) {})
	if _, err := l2.p.Restore(st, l.now); err != nil {
		t.Fatal(err)
	}
	// The server's 200 went by before the restart; the client's next
	// line comes first.
	if v, _ := l2.send(true, tcpSeg{seq: 1009, ack: 5017, acked: true, payload: []byte("RETR f\r\n")}); v == DropSegment {
		t.Error("the client's line after a restart held back by a rewrite from before it")
	}
}
