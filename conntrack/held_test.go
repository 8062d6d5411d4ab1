package conntrack

import (
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket/layers"

	"github.com/ftpgate/ftpgate/rules"
)

// dataSYN is a raw IP SYN, as the kernel queues it, from peer to addr:port.
func dataSYN(t *testing.T, peer, addr string) []byte {
	c := newConn(t, peer, addr)
	return c.packet(true, 7000, "S", nil)[14:] // without the Ethernet header
}

// passiveAnnounced feeds a session up to a 227 announcing 198.51.100.20:40001
// and commits only if commit is set.
func passiveAnnounced(t *testing.T, h *harness, commit bool) {
	c := newConn(t, cli, srv)
	h.feed(c.handshake()...)
	h.feed(c.send(false, "220 hello\r\n"), c.send(true, "PASV\r\n"))
	reply := c.send(false, "227 Entering Passive Mode (198,51,100,20,156,65).\r\n")
	h.tr.HandlePacket(reply, layers.LinkTypeEthernet, h.ts)
	if commit {
		if err := h.tr.Commit(); err != nil {
			t.Fatal(err)
		}
	}
}

const announced = "198.51.100.20:40001" // 156*256+65

func TestHeldSYNAdmittedBeforeCommitCostsNoCommit(t *testing.T) {
	h := newHarness(t, Config{})
	passiveAnnounced(t, h, false)
	syn := dataSYN(t, "192.0.2.10:50000", announced)
	if v := h.tr.AdmitHeldSYN(syn); v != HeldAdmit {
		t.Fatalf("held SYN to an open pinhole: verdict %d, want HeldAdmit", v)
	}
	if v := h.tr.AdmitHeldSYN(dataSYN(t, "192.0.2.10:50001", announced)); v != HeldPass {
		t.Errorf("a second SYN through a used pinhole: verdict %d, want HeldPass", v)
	}
	if err := h.tr.Commit(); err != nil {
		t.Fatal(err)
	}
	if h.fw.Adds != 0 || h.fw.Dels != 0 || len(h.fw.Open) != 0 {
		t.Errorf("backend adds=%d dels=%d open=%v; want the uncommitted add cancelled and nothing else", h.fw.Adds, h.fw.Dels, h.fw.Open)
	}
	if st := h.tr.Stats(); st.SYNsHeld != 2 || st.SYNsAdmitted != 1 || st.AddsCancelled != 1 || st.PinholesConsumed != 1 || st.PinholesOpen != 0 {
		t.Errorf("stats = %+v", st)
	}
}

// A pinhole that is in the kernel is the kernel's to use up: its consume
// rule is atomic, and if ftpgate admitted a held SYN too, a second SYN on
// another CPU could pass there. The held SYN is sent back to that rule
// once; if it comes back, the kernel had no pinhole left for it.
func TestHeldSYNAfterCommitRetriedInKernel(t *testing.T) {
	h := newHarness(t, Config{})
	passiveAnnounced(t, h, true)
	if h.fw.Adds != 1 {
		t.Fatalf("adds = %d, want 1", h.fw.Adds)
	}
	syn := dataSYN(t, "192.0.2.10:50000", announced)
	if v := h.tr.AdmitHeldSYN(syn); v != HeldRetry {
		t.Fatalf("held SYN to a committed pinhole: verdict %d, want HeldRetry", v)
	}
	if v := h.tr.AdmitHeldSYN(syn); v != HeldPass {
		t.Fatalf("the same SYN back from the kernel: verdict %d, want HeldPass", v)
	}
	if err := h.tr.Commit(); err != nil {
		t.Fatal(err)
	}
	if h.fw.Dels != 0 || len(h.fw.Open) != 1 {
		t.Errorf("dels=%d open=%v; want the pinhole left to the kernel", h.fw.Dels, h.fw.Open)
	}
	if st := h.tr.Stats(); st.SYNsAdmitted != 0 || st.SYNsRetried != 1 || st.AddsCancelled != 0 {
		t.Errorf("admitted %d, retried %d, cancelled %d; want 0, 1, 0", st.SYNsAdmitted, st.SYNsRetried, st.AddsCancelled)
	}
}

// A pinhole whose add is queued but not cancellable (an element of the
// same key was in the kernel) is committed before the SYN is retried.
func TestHeldSYNRetryCommitsFirst(t *testing.T) {
	h := newHarness(t, Config{})
	passiveAnnounced(t, h, true)
	c := newConn(t, "192.0.2.10:40001", srv)
	h.feed(c.handshake()...)
	h.feed(c.send(false, "220 hello\r\n"), c.send(true, "PASV\r\n"))
	reply := c.send(false, "227 Entering Passive Mode (198,51,100,20,156,65).\r\n") // the same port again
	h.tr.HandlePacket(reply, layers.LinkTypeEthernet, h.ts)
	commits := h.fw.Commits
	if v := h.tr.AdmitHeldSYN(dataSYN(t, "192.0.2.10:50000", announced)); v != HeldRetry {
		t.Fatalf("verdict %d, want HeldRetry", v)
	}
	if h.fw.Commits != commits+1 {
		t.Errorf("commits %d -> %d; want the queued add committed before the retry", commits, h.fw.Commits)
	}
}

// A pinhole closed before its add was committed, here superseded by the
// next PASV, never reaches the kernel: the add is cancelled rather than
// committed together with its delete.
func TestPinholeClosedBeforeCommitIsCancelled(t *testing.T) {
	h := newHarness(t, Config{})
	c := newConn(t, cli, srv)
	h.feed(c.handshake()...)
	h.feed(c.send(false, "220 hello\r\n"), c.send(true, "PASV\r\n"))
	for _, p := range [][]byte{
		c.send(false, "227 Entering Passive Mode (198,51,100,20,156,65).\r\n"),
		c.send(true, "PASV\r\n"),
	} {
		h.tr.HandlePacket(p, layers.LinkTypeEthernet, h.ts)
	}
	if err := h.tr.Commit(); err != nil {
		t.Fatal(err)
	}
	if h.fw.Adds != 0 || h.fw.Dels != 0 || len(h.fw.Open) != 0 {
		t.Errorf("backend adds=%d dels=%d open=%v; want the superseded add cancelled and nothing else", h.fw.Adds, h.fw.Dels, h.fw.Open)
	}
	if st := h.tr.Stats(); st.ChannelsOpened != 1 || st.PinholesClosed != 1 || st.AddsCancelled != 1 || st.PinholesOpen != 0 {
		t.Errorf("stats = %+v", st)
	}
}

func TestHeldSYNRefused(t *testing.T) {
	h := newHarness(t, Config{})
	passiveAnnounced(t, h, true)
	for name, syn := range map[string][]byte{
		"other port":    dataSYN(t, "192.0.2.10:50000", "198.51.100.20:40002"),
		"other peer":    dataSYN(t, "192.0.2.99:50000", announced),
		"not a packet":  []byte{0x45, 0, 0},
		"SYN-ACK":       newConn(t, "192.0.2.10:50000", announced).packet(true, 1, "SA", nil)[14:],
		"no SYN at all": newConn(t, "192.0.2.10:50000", announced).packet(true, 1, "A", nil)[14:],
	} {
		if v := h.tr.AdmitHeldSYN(syn); v != HeldPass {
			t.Errorf("%s: verdict %d, want HeldPass", name, v)
		}
	}
	if len(h.fw.Open) != 1 {
		t.Errorf("the announced pinhole should still be open: %v", h.fw.Open)
	}
}

func TestPeersFollowSessions(t *testing.T) {
	h := newHarness(t, Config{})
	a := newConn(t, cli, srv)
	b := newConn(t, "192.0.2.10:40001", srv)
	h.feed(a.handshake()...)
	h.feed(b.handshake()...)
	want := rules.Peers{Client: netip.MustParseAddr("192.0.2.10"), Server: netip.MustParseAddr("198.51.100.20")}
	if len(h.fw.Peers) != 1 || !h.fw.Peers[want] {
		t.Fatalf("peers = %v, want only %v", h.fw.Peers, want)
	}
	h.feed(a.packet(true, a.cseq, "R", nil))
	if !h.fw.Peers[want] {
		t.Fatalf("peers removed while another session of the same hosts runs")
	}
	h.feed(b.packet(false, b.sseq, "R", nil))
	if len(h.fw.Peers) != 0 {
		t.Errorf("peers left after both sessions ended: %v", h.fw.Peers)
	}
}
