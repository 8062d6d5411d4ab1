package nat_test

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	vnl "github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ftpgate/ftpgate/capture"
	"github.com/ftpgate/ftpgate/internal/netnstest"
	"github.com/ftpgate/ftpgate/nat"
)

// The packet path on this kernel: segments of a translated control
// connection queued both ways (from the client before conntrack, from
// the server after source NAT), lines rewritten to other lengths, and
// every later segment shifted by ftpgate, through a gateway whose
// conntrack tracks windows strictly and drops what it finds invalid.

// packetLab is a client, a masquerading gateway and a server, each in a
// namespace of its own, IPv4 and IPv6.
type packetLab struct {
	client, gw, server netns.NsHandle
}

func sh(t *testing.T, ns netns.NsHandle, script string) {
	t.Helper()
	var out []byte
	var err error
	netnstest.In(t, ns, func() { out, err = exec.Command("sh", "-ec", script).CombinedOutput() })
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
}

func newPacketLab(t *testing.T) packetLab {
	l := packetLab{client: netnstest.New(t), gw: netnstest.New(t), server: netnstest.New(t)}
	netnstest.In(t, l.gw, func() {
		for _, p := range []struct {
			here, there string
			ns          netns.NsHandle
		}{{"g0", "c0", l.client}, {"g1", "s0", l.server}} {
			if err := vnl.LinkAdd(&vnl.Veth{LinkAttrs: vnl.LinkAttrs{Name: p.here}, PeerName: p.there}); err != nil {
				t.Errorf("veth %s: %v", p.here, err)
				return
			}
			peer, err := vnl.LinkByName(p.there)
			if err == nil {
				err = vnl.LinkSetNsFd(peer, int(p.ns))
			}
			if err != nil {
				t.Errorf("moving %s: %v", p.there, err)
			}
		}
	})
	if t.Failed() {
		t.FailNow()
	}
	// conntrack's sysctls exist once its module is in (a kernel with it
	// as a module, the VM's, before anything else used it).
	_ = exec.Command("modprobe", "-q", "nf_conntrack").Run()
	sh(t, l.gw, `ip link set lo up; ip link set g0 up; ip link set g1 up
ip addr add 192.0.2.1/24 dev g0; ip addr add 198.51.100.1/24 dev g1
ip -6 addr add 2001:db8:1::1/64 dev g0 nodad; ip -6 addr add 2001:db8:2::1/64 dev g1 nodad
sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 net.netfilter.nf_conntrack_tcp_be_liberal=0`)
	sh(t, l.client, `ip link set lo up; ip link set c0 up; ip addr add 192.0.2.10/24 dev c0; ip -6 addr add 2001:db8:1::10/64 dev c0 nodad
ip route add default via 192.0.2.1; ip -6 route add default via 2001:db8:1::1`)
	sh(t, l.server, `ip link set lo up; ip link set s0 up; ip addr add 198.51.100.2/24 dev s0; ip -6 addr add 2001:db8:2::2/64 dev s0 nodad`)
	return l
}

// nftScript loads a ruleset into ns from text.
func nftScript(t *testing.T, ns netns.NsHandle, text string) {
	t.Helper()
	var out []byte
	var err error
	netnstest.In(t, ns, func() {
		cmd := exec.Command("nft", "-f", "-")
		cmd.Stdin = strings.NewReader(text)
		out, err = cmd.CombinedOutput()
	})
	if err != nil {
		t.Fatalf("nft -f: %v\n%s\n%s", err, out, text)
	}
}

const packetLabAdmin = `
table inet admin {
	counter invalid { }
	chain forward {
		type filter hook forward priority filter; policy drop;
		ct state invalid counter name "invalid" drop
		ct state established,related accept
		iifname "g0" accept
	}
	chain postrouting {
		type nat hook postrouting priority srcnat;
		oifname "g1" masquerade
	}
}
`

// packetLabAdmin is the admin's ruleset: default drop, what conntrack
// finds invalid dropped and counted, the LAN masqueraded.
//
// packetLabSets and packetLabDetect are both queue tables' sets of
// translated control connections to port 2100, and the chain that finds
// them after source NAT (as ftpgate's detect chain does, without the
// drop).
const (
	packetLabSets = `	set ctl4 { type ipv4_addr . inet_service . ipv4_addr . inet_service; size 1024; }
	set ctl6 { type ipv6_addr . inet_service . ipv6_addr . inet_service; size 1024; }
`
	packetLabDetect = `	chain detect {
		type filter hook postrouting priority srcnat + 1;
		tcp dport 2100 tcp flags & (syn | ack) == syn ct state new ct status & (snat | dnat) != 0 meta nfproto ipv4 add @ctl4 { ct original ip saddr . ct original proto-src . ct original ip daddr . ct original proto-dst }
		tcp dport 2100 tcp flags & (syn | ack) == syn ct state new ct status & (snat | dnat) != 0 meta nfproto ipv6 add @ctl6 { ct original ip6 saddr . ct original proto-src . ct original ip6 daddr . ct original proto-dst }
	}
`
)

// packetLabQueue is the packet path's part: translated control
// connections to port 2100 found after source NAT (as ftpgate's detect
// chain does, without the drop), and every segment of theirs queued.
const packetLabQueue = `
table inet pp {
` + packetLabSets + packetLabDetect + `	chain from_client {
		type filter hook prerouting priority -250;
		ip saddr . tcp sport . ip daddr . tcp dport @ctl4 counter
		ip6 saddr . tcp sport . ip6 daddr . tcp dport @ctl6 counter
	}
	chain from_server {
		type filter hook postrouting priority srcnat + 2;
		ct direction reply ip daddr . tcp dport . ip saddr . tcp sport @ctl4 counter
		ct direction reply ip6 daddr . tcp dport . ip6 saddr . tcp sport @ctl6 counter
	}
}
`

// queueRules makes the counters of the packet path's chains queue to 77,
// with the native queue statement where the kernel has it and the
// xtables NFQUEUE target through nft's compat layer where it does not
// (this machine), without bypass: nothing of a shifted connection may go
// on unshifted.
func queueRules(t *testing.T, ns netns.NsHandle) {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	table := &nftables.Table{Name: "pp", Family: nftables.TableFamilyINet}
	info := make([]byte, 8) // xt_NFQ_info_v3: queue 77, one queue, no flags
	binary.NativeEndian.PutUint16(info[0:], 77)
	binary.NativeEndian.PutUint16(info[2:], 1)
	xtInfo := xt.Unknown(info)
	for _, q := range []expr.Any{&expr.Queue{Num: 77}, &expr.Target{Name: "NFQUEUE", Rev: 3, Info: &xtInfo}} {
		for _, name := range []string{"from_client", "from_server"} {
			rs, err := c.GetRules(table, &nftables.Chain{Name: name, Table: table})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rs {
				r.Exprs = append(r.Exprs[:len(r.Exprs)-1], q)
				c.ReplaceRule(r)
			}
		}
		if err = c.Flush(); err == nil {
			return
		}
	}
	t.Fatalf("queue rules: %v", err)
}

// Lines the rewriter changes: the client's grows, the server's shrinks.
var (
	clientLine, clientLineOut = []byte("PORT 10,0,0,5,195,80\r\n"), []byte("PORT 203,0,113,200,195,80\r\n")
	serverLine, serverLineOut = []byte("227 Entering Passive Mode (10,0,0,2,4,1).\r\n"), []byte("227 (203,0,113,9,4,1)\r\n")
)

// How the rewriter treats sequence numbers.
type shiftMode int

const (
	shiftNone   shiftMode = iota // only the rewritten segments change, as a rewriter that forgot the numbers would
	shiftHere                    // every segment through a PacketConn: ftpgate shifts
	shiftKernel                  // rewritten segments only, their verdicts asking the kernel to shift (KernelShifts)
)

// rewriter serves queue 77 in the gateway until stop: each segment's
// lines are rewritten where they are whole in it, the numbers as mode
// says. bare, if given, counts the segments queued ([0]) and of them
// those that carried neither data nor SYN, FIN or RST ([1]).
func rewriter(t *testing.T, ns netns.NsHandle, shift shiftMode, stop chan struct{}, bare *[2]int) *sync.WaitGroup {
	q, err := capture.OpenRewriteQueue(77, 4096, int(ns))
	if err != nil {
		t.Fatalf("OpenRewriteQueue: %v", err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	conns := map[string]*nat.PacketConn{}
	go func() {
		defer wg.Done()
		defer q.Close()
		fds := []unix.PollFd{{Fd: int32(q.Fd()), Events: unix.POLLIN}}
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := unix.Poll(fds, 50); err != nil && err != unix.EINTR {
				t.Errorf("poll: %v", err)
				return
			}
			if err := q.Read(func(p *capture.Packet) {
				seg, err := nat.ParseSegment(p.Data)
				if err != nil {
					t.Errorf("queued packet: %v", err)
					p.Verdict = capture.Drop
					return
				}
				src, dst, fromServer := endpoints(p.Data)
				key := src + "|" + dst
				if fromServer {
					key = dst + "|" + src
				}
				c := conns[key]
				if c == nil {
					c = &nat.PacketConn{}
					conns[key] = c
				}
				payload := seg.Payload()
				if bare != nil {
					bare[0]++
					if len(payload) == 0 && seg.Flags&(nat.FlagSYN|nat.FlagFIN|nat.FlagRST) == 0 {
						bare[1]++
					}
				}
				var out []byte
				switch {
				case !fromServer && bytes.Contains(payload, clientLine):
					out = bytes.ReplaceAll(payload, clientLine, clientLineOut)
				case fromServer && bytes.Contains(payload, serverLine):
					out = bytes.ReplaceAll(payload, serverLine, serverLineOut)
				}
				if shift != shiftHere {
					if out != nil {
						b, err := seg.Adjusted(nil, out, &nat.SeqAdjust{}, &nat.SeqAdjust{})
						if err != nil {
							t.Errorf("Adjusted: %v", err)
						}
						p.Replace, p.KernelShifts = b, shift == shiftKernel
					}
					return
				}
				b, err := c.Pass(nil, seg, fromServer, out)
				if err != nil {
					t.Errorf("Pass: %v", err)
					p.Verdict = capture.Drop
					return
				}
				p.Replace = b
			}); err != nil {
				t.Errorf("Read: %v", err)
				return
			}
			if err := q.Release(); err != nil {
				t.Errorf("Release: %v", err)
				return
			}
		}
	}()
	return &wg
}

// endpoints reads a queued packet's addresses and ports, and whether it
// comes from the server (port 2100).
func endpoints(b []byte) (src, dst string, fromServer bool) {
	var s, d net.IP
	var tcp []byte
	if b[0]>>4 == 4 {
		ihl := int(b[0]&0x0f) * 4
		s, d, tcp = net.IP(b[12:16]), net.IP(b[16:20]), b[ihl:]
	} else {
		s, d, tcp = net.IP(b[8:24]), net.IP(b[24:40]), b[40:]
	}
	sp, dp := int(tcp[0])<<8|int(tcp[1]), int(tcp[2])<<8|int(tcp[3])
	return net.JoinHostPort(s.String(), fmt.Sprint(sp)), net.JoinHostPort(d.String(), fmt.Sprint(dp)), sp == 2100
}

// exchange runs the test protocol over one connection: rounds of a
// client line and a server line, each read back as rewritten, then a
// megabyte each way, checked by its digest.
func exchange(t *testing.T, l packetLab, network, server string, rounds int, deadline time.Duration) error {
	var ln net.Listener
	var err error
	netnstest.In(t, l.server, func() { ln, err = net.Listen(network, net.JoinHostPort(server, "2100")) })
	if err != nil {
		return err
	}
	defer ln.Close()
	bulk := make([]byte, 1<<20)
	for i := range bulk {
		bulk[i] = byte(rand.IntN(256))
	}
	sum := sha256.Sum256(bulk)
	serverErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			serverErr <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(deadline))
		r := bufio.NewReader(c)
		for i := range rounds {
			got, err := r.ReadBytes('\n')
			if err != nil {
				serverErr <- fmt.Errorf("server, round %d: %w", i, err)
				return
			}
			if !bytes.Equal(got, clientLineOut) {
				serverErr <- fmt.Errorf("server, round %d: got %q, want %q", i, got, clientLineOut)
				return
			}
			if _, err := c.Write(serverLine); err != nil {
				serverErr <- err
				return
			}
		}
		// Both ways at once; the connection closes only once its own
		// megabyte is written (under TCG the reading side can be done
		// first).
		wrote := make(chan error, 1)
		go func() { _, err := c.Write(bulk); wrote <- err }()
		got := make([]byte, len(bulk))
		if _, err := io.ReadFull(r, got); err != nil {
			serverErr <- fmt.Errorf("server, bulk: %w", err)
			return
		}
		if sha256.Sum256(got) != sum {
			serverErr <- fmt.Errorf("server: the client's megabyte came changed")
			return
		}
		serverErr <- <-wrote
	}()
	var c net.Conn
	netnstest.In(t, l.client, func() { c, err = net.DialTimeout(network, net.JoinHostPort(server, "2100"), deadline) })
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(deadline))
	r := bufio.NewReader(c)
	for i := range rounds {
		if _, err := c.Write(clientLine); err != nil {
			return err
		}
		got, err := r.ReadBytes('\n')
		if err != nil {
			return fmt.Errorf("client, round %d: %w", i, err)
		}
		if !bytes.Equal(got, serverLineOut) {
			return fmt.Errorf("client, round %d: got %q, want %q", i, got, serverLineOut)
		}
	}
	wrote := make(chan error, 1)
	go func() { _, err := c.Write(bulk); wrote <- err }()
	defer func() { <-wrote }() // before the deferred close
	got := make([]byte, len(bulk))
	if _, err := io.ReadFull(r, got); err != nil {
		// What the server saw, if it stopped first.
		select {
		case serr := <-serverErr:
			return fmt.Errorf("client, bulk: %w (server: %v)", err, serr)
		case <-time.After(time.Second):
			return fmt.Errorf("client, bulk: %w", err)
		}
	}
	if sha256.Sum256(got) != sum {
		return fmt.Errorf("client: the server's megabyte came changed")
	}
	return <-serverErr
}

func TestPacketPathShiftsSequenceNumbers(t *testing.T) {
	l := newPacketLab(t)
	nftScript(t, l.gw, packetLabAdmin)
	nftScript(t, l.gw, packetLabQueue)
	queueRules(t, l.gw)
	stop := make(chan struct{})
	wg := rewriter(t, l.gw, shiftHere, stop, nil)
	defer func() { close(stop); wg.Wait() }()
	for _, c := range []struct{ network, server string }{{"tcp4", "198.51.100.2"}, {"tcp6", "2001:db8:2::2"}} {
		if err := exchange(t, l, c.network, c.server, 50, 20*time.Second); err != nil {
			t.Errorf("%s through the packet path: %v", c.network, err)
		}
	}
	if out := netnstest.Nft(t, l.gw, "list", "counter", "inet", "admin", "invalid"); !strings.Contains(out, "packets 0 ") {
		t.Errorf("conntrack found segments invalid:\n%s", out)
	}
	if out := netnstest.Nft(t, l.gw, "list", "set", "inet", "pp", "ctl4"); !strings.Contains(out, "192.0.2.10") {
		t.Errorf("the connection was not found translated (nothing was queued):\n%s", out)
	}
}

// TestPacketPathWithoutShiftFails is the control: the same rewrites
// without the shift of later segments break the connection, so the test
// above cannot pass by the kernel's doing.
func TestPacketPathWithoutShiftFails(t *testing.T) {
	l := newPacketLab(t)
	nftScript(t, l.gw, packetLabAdmin)
	nftScript(t, l.gw, packetLabQueue)
	queueRules(t, l.gw)
	stop := make(chan struct{})
	wg := rewriter(t, l.gw, shiftNone, stop, nil)
	defer func() { close(stop); wg.Wait() }()
	if err := exchange(t, l, "tcp4", "198.51.100.2", 5, 4*time.Second); err == nil {
		t.Error("rewrites without the shift went through: the lab does not test the shift")
	}
}

// packetLabKernelShift is the packet path's part where the kernel
// shifts (rules.NATConfig.KernelShifts, there for IPv4 only; here for
// both, for TestKernelShiftIPv6Fails): the helper stub for new
// connections to port 2100 before NAT, and only the segments of an
// established translated connection that carry data, SYN, FIN or RST
// queued, the client's after conntrack.
const packetLabKernelShift = `
table inet pp {
	ct helper stub { type "ftpgate" protocol tcp; }
` + packetLabSets + `	chain helper {
		type filter hook prerouting priority -160;
		HELPER
	}
` + packetLabDetect + `	chain from_client {
		type filter hook prerouting priority -150;
		ct state established tcp flags & (fin | syn | rst) != 0 ip saddr . tcp sport . ip daddr . tcp dport @ctl4 counter
		ct state established @ih,0,8 & 0x0 == 0x0 ip saddr . tcp sport . ip daddr . tcp dport @ctl4 counter
		ct state established tcp flags & (fin | syn | rst) != 0 ip6 saddr . tcp sport . ip6 daddr . tcp dport @ctl6 counter
		ct state established @ih,0,8 & 0x0 == 0x0 ip6 saddr . tcp sport . ip6 daddr . tcp dport @ctl6 counter
	}
	chain from_server {
		type filter hook postrouting priority srcnat + 2;
		ct state established ct direction reply tcp flags & (fin | syn | rst) != 0 ip daddr . tcp dport . ip saddr . tcp sport @ctl4 counter
		ct state established ct direction reply @ih,0,8 & 0x0 == 0x0 ip daddr . tcp dport . ip saddr . tcp sport @ctl4 counter
		ct state established ct direction reply tcp flags & (fin | syn | rst) != 0 ip6 daddr . tcp dport . ip6 saddr . tcp sport @ctl6 counter
		ct state established ct direction reply @ih,0,8 & 0x0 == 0x0 ip6 daddr . tcp dport . ip6 saddr . tcp sport @ctl6 counter
	}
}
`

// kernelShiftLab is the lab with the kernel-shift rules, the helper
// assigned or not; it skips where the kernel cannot shift for
// userspace.
func kernelShiftLab(t *testing.T, helper bool) packetLab {
	t.Helper()
	l := newPacketLab(t)
	if glue, err := capture.ProbeQueueConntrack(7777, int(l.gw)); err != nil || !glue {
		t.Skipf("this kernel's NFQUEUE has no conntrack glue (CONFIG_NETFILTER_NETLINK_GLUE_CT; %v): ftpgate shifts itself here (TestPacketPathShiftsSequenceNumbers)", err)
	}
	if err := nat.RegisterHelperStub(int(l.gw)); err != nil {
		t.Skipf("this kernel has no userspace conntrack helpers: %v", err)
	}
	nftScript(t, l.gw, packetLabAdmin)
	rule := `tcp dport 2100 tcp flags & (syn | ack) == syn ct state new ct helper set "stub"`
	if !helper {
		rule = `tcp dport 2100 counter`
	}
	nftScript(t, l.gw, strings.Replace(packetLabKernelShift, "HELPER", rule, 1))
	nftScript(t, l.gw, `table inet count {
	chain forward {
		type filter hook forward priority -300;
		tcp dport 2100 counter
		tcp sport 2100 counter
	}
}
`)
	queueRules(t, l.gw)
	return l
}

// TestKernelShiftsSequenceNumbers is the design for kernels with the
// glue (Debian's; the VM matrix runs it), IPv4: the rewriter touches only
// the segments whose lines it rewrites, each verdict carries NFQA_CT,
// and the kernel's seqadj shifts every later segment, through the same
// strict gateway. No bare acknowledgement is queued.
func TestKernelShiftsSequenceNumbers(t *testing.T) {
	l := kernelShiftLab(t, true)
	stop := make(chan struct{})
	var counts [2]int
	wg := rewriter(t, l.gw, shiftKernel, stop, &counts)
	if err := exchange(t, l, "tcp4", "198.51.100.2", 50, 20*time.Second); err != nil {
		t.Errorf("tcp4 with the kernel shifting: %v", err)
	}
	close(stop)
	wg.Wait()
	if out := netnstest.Nft(t, l.gw, "list", "counter", "inet", "admin", "invalid"); !strings.Contains(out, "packets 0 ") {
		t.Errorf("conntrack found segments invalid:\n%s", out)
	}
	if out := netnstest.Nft(t, l.gw, "list", "set", "inet", "pp", "ctl4"); !strings.Contains(out, "192.0.2.10") {
		t.Errorf("the connection was not found translated (nothing was queued):\n%s", out)
	}
	if counts[1] != 0 {
		t.Errorf("%d bare acknowledgements were queued", counts[1])
	}
	fwd := netnstest.Nft(t, l.gw, "list", "chain", "inet", "count", "forward")
	t.Logf("queued %d segments; the gateway forwarded:\n%s", counts[0], fwd)
}

// exchangeFails runs a short exchange through the kernel-shift lab (the
// helper stub assigned or not, the rewriter's numbers as mode says) and
// reports whether it failed, as each control below must.
func exchangeFails(t *testing.T, helper bool, mode shiftMode, network, server string) bool {
	t.Helper()
	l := kernelShiftLab(t, helper)
	stop := make(chan struct{})
	wg := rewriter(t, l.gw, mode, stop, nil)
	defer func() { close(stop); wg.Wait() }()
	return exchange(t, l, network, server, 5, 4*time.Second) != nil
}

// TestKernelShiftWithoutHelperFails is the control: without the helper
// stub the connection has no seqadj extension, the kernel records
// nothing, and the same verdicts break the stream.
func TestKernelShiftWithoutHelperFails(t *testing.T) {
	if !exchangeFails(t, false, shiftKernel, "tcp4", "198.51.100.2") {
		t.Error("rewrites went through without the helper stub: the lab does not test that the kernel shifts")
	}
}

// TestKernelShiftWithoutConntrackVerdictFails is the other control: with
// the helper, verdicts without NFQA_CT leave the kernel unaware of the
// rewrites.
func TestKernelShiftWithoutConntrackVerdictFails(t *testing.T) {
	if !exchangeFails(t, true, shiftNone, "tcp4", "198.51.100.2") {
		t.Error("rewrites went through without NFQA_CT: the lab does not test the verdict")
	}
}

// TestKernelShiftIPv6Fails pins why IPv6 stays with ftpgate's own shift
// where the kernel could shift IPv4: the kernel records a verdict's
// change of length at the sequence number it reads with the IPv4 header
// length (nf_ct_tcp_seqadj_set uses ip_hdrlen), so for IPv6 at a wrong
// one, and the stream breaks. A kernel where this passes has fixed it.
func TestKernelShiftIPv6Fails(t *testing.T) {
	if !exchangeFails(t, true, shiftKernel, "tcp6", "2001:db8:2::2") {
		t.Error("IPv6 rewrites went through with the kernel shifting: this kernel records IPv6 corrections right; ftpgate could leave IPv6 to it too")
	}
}
