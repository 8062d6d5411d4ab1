package capture_test

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/ftpgate/ftpgate/capture"
	"github.com/ftpgate/ftpgate/internal/netnstest"
	"github.com/ftpgate/ftpgate/rules"
)

// Tests of what the kernel delivers to capture's sources under ftpgate's
// rules, in a throwaway namespace.

func openRules(t *testing.T, ns netns.NsHandle, group uint16) *rules.Nftables {
	t.Helper()
	n, err := rules.Open(rules.Config{Mark: 0x01000000, MarkMask: 0x01000000, NetNS: int(ns), LogGroup: group})
	if err != nil {
		t.Fatalf("rules.Open: %v", err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

// classify is cmd/ftpgate's: copies have no prefix, reports of used
// pinholes theirs, and the flush records are not handed on.
func classify(prefix []byte) (capture.Kind, bool) {
	switch string(prefix) {
	case "":
		return capture.Copy, true
	case rules.LogPrefixUsed:
		return capture.Used, true
	}
	return 0, false
}

// usedReport waits for a report of a used pinhole and reads its key from
// the IPv4 headers.
func usedReport(t *testing.T, l *capture.LogReader, within time.Duration) (rules.Pinhole, bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		var got rules.Pinhole
		var found bool
		if err := l.Read(func(p *capture.Packet) {
			if p.Kind != capture.Used {
				t.Errorf("record of kind %d, want a report of a used pinhole", p.Kind)
				return
			}
			b := p.Data
			ihl := int(b[0]&0x0f) * 4
			got = rules.Pinhole{Peer: netip.AddrFrom4([4]byte(b[12:16])), Addr: netip.AddrFrom4([4]byte(b[16:20])), Port: binary.BigEndian.Uint16(b[ihl+2:])}
			found = true
		}); err != nil {
			t.Fatalf("Read: %v", err)
		}
		if found {
			return got, true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return rules.Pinhole{}, false
}

// TestPinholeConsumedByFirstSYN connects over loopback inside the
// namespace: the output chain sees the SYN, marks the connection and
// deletes the element, so a second connection finds no pinhole.
func TestPinholeConsumedByFirstSYN(t *testing.T) {
	ns := netnstest.New(t)
	n := openRules(t, ns, 77)
	l, err := capture.OpenLog(77, int(ns), classify)
	if err != nil {
		t.Fatalf("OpenLog: %v", err)
	}
	defer l.Close()
	var ln net.Listener
	netnstest.In(t, ns, func() {
		if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
			t.Fatalf("ip link set lo up: %v %s", err, out)
		}
		var err error
		ln, err = net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
	})
	defer ln.Close()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	lo := netip.MustParseAddr("127.0.0.1")
	p := rules.Pinhole{Peer: lo, Addr: lo, Port: port}
	if err := n.AddPinhole(p, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := n.Commit(); err != nil {
		t.Fatal(err)
	}
	netnstest.In(t, ns, func() {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Errorf("dial: %v", err)
			return
		}
		c.Close()
	})
	if got, err := n.Pinholes(); err != nil || len(got) != 0 {
		t.Errorf("pinhole still present after its connection started: %v", got)
	}
	if got, ok := usedReport(t, l, 3*time.Second); !ok {
		t.Errorf("no NFLOG report of the consumed pinhole")
	} else if got != p {
		t.Errorf("NFLOG reported %v, want %v", got, p)
	}
	out := netnstest.Nft(t, ns, "list", "chain", "inet", "ftpgate", "mark_ftp_data_output")
	if !strings.Contains(out, "counter packets 1 ") {
		t.Errorf("want exactly one packet counted by the consuming rule:\n%s", out)
	}
	// The mark is on the connection in conntrack.
	var ctOut []byte
	netnstest.In(t, ns, func() {
		ctOut, _ = exec.Command("cat", "/proc/net/nf_conntrack").CombinedOutput()
	})
	if len(ctOut) > 0 && !strings.Contains(string(ctOut), "mark=16777216") {
		t.Errorf("no conntrack entry with mark 0x01000000:\n%s", ctOut)
	}
}

// TestHeldSYNFlushesBatchedCopies checks the ordering inline capture
// relies on once copies are batched: a data SYN between control peers
// that finds no pinhole delivers every copy logged before it, before it
// is queued, so the daemon sees the announcement it answers.
func TestHeldSYNFlushesBatchedCopies(t *testing.T) {
	ns := netnstest.New(t)
	n := openRules(t, ns, 78)
	var ctl, data net.Listener
	netnstest.In(t, ns, func() {
		var err error
		if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
			t.Fatalf("ip link set lo up: %v %s", err, out)
		}
		if ctl, err = net.Listen("tcp4", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if data, err = net.Listen("tcp4", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	})
	defer ctl.Close()
	defer data.Close()
	ctlPort := uint16(ctl.Addr().(*net.TCPAddr).Port)
	// No process reads the queue: with bypass, held packets go on at once.
	if _, err := n.AddInlineRules(7878, 78, []uint16{ctlPort}); err != nil {
		t.Fatalf("AddInlineRules: %v", err)
	}
	lo := netip.MustParseAddr("127.0.0.1")
	if err := n.AddPeers(rules.Peers{Client: lo, Server: lo}); err != nil {
		t.Fatal(err)
	}
	if err := n.Commit(); err != nil {
		t.Fatal(err)
	}
	listing := netnstest.Nft(t, ns, "list", "chain", "inet", "ftpgate", "mark_ftp_data_output")
	if want := `log prefix "ftpgate: flush" group 78 snaplen 0 queue-threshold 1`; !strings.Contains(listing, want) {
		t.Errorf("hold rule lacks %q:\n%s", want, listing)
	}
	// Traffic that cannot concern ftpgate leaves the chain first.
	order := []string{
		"meta l4proto != tcp return",
		"@th,104,8 & 0x12 != 0x2 return",
		"meta mark & 0x01000000 == 0x01000000",
	}
	for i, at := 0, -1; i < len(order); i++ {
		j := strings.Index(listing, order[i])
		if j < 0 || j < at {
			t.Errorf("want the rules in the order %q; %q is missing or out of place:\n%s", order, order[i], listing)
			break
		}
		at = j
	}
	l, err := capture.OpenLog(78, int(ns), classify)
	if err != nil {
		t.Fatalf("OpenLog: %v", err)
	}
	defer l.Close()
	// Ten seconds is far longer than this test takes between sending a
	// copy and reading it: only the SYN's own record can deliver it.
	if err := l.SetBatch(64, 32<<10, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	const line = "227 Entering Passive Mode (127,0,0,1,4,1)\r\n"
	netnstest.In(t, ns, func() {
		c, err := net.Dial("tcp4", ctl.Addr().String())
		if err != nil {
			t.Fatalf("dial control: %v", err)
		}
		defer c.Close()
		if _, err := c.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	})
	// The SYN's own record carries no packet (snaplen 0) and is not
	// handed on; the copies it delivered are what counts.
	payloads := func() (n int, found bool) {
		err := l.Read(func(p *capture.Packet) {
			n++
			found = found || strings.Contains(string(p.Data), line)
		})
		if err != nil {
			t.Fatalf("Drain: %v", err)
		}
		return
	}
	if n, _ := payloads(); n != 0 {
		t.Fatalf("%d records delivered before the batch was due; the test cannot tell a flush from the timer", n)
	}
	netnstest.In(t, ns, func() {
		c, err := net.Dial("tcp4", data.Addr().String())
		if err != nil {
			t.Fatalf("dial data: %v", err)
		}
		c.Close()
	})
	if n, found := payloads(); !found {
		t.Errorf("after the data SYN: %d records, none with the control line; the SYN did not deliver the batch", n)
	}
}

// TestInlineCopiesSegmentsWithData checks which control segments inline
// capture copies: every one that carries data, IP options or IPv6
// headers whatever their length, and SYN, FIN and RST, but no pure ACK,
// a large share of control traffic that ftpgate has no use for.
func TestInlineCopiesSegmentsWithData(t *testing.T) {
	for _, tc := range []struct{ network, addr string }{{"tcp4", "127.0.0.1:0"}, {"tcp6", "[::1]:0"}} {
		t.Run(tc.network, func(t *testing.T) {
			ns := netnstest.New(t)
			n := openRules(t, ns, 79)
			var ctl net.Listener
			netnstest.In(t, ns, func() {
				if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
					t.Fatalf("ip link set lo up: %v %s", err, out)
				}
				var err error
				if ctl, err = net.Listen(tc.network, tc.addr); err != nil {
					t.Fatal(err)
				}
			})
			defer ctl.Close()
			port := uint16(ctl.Addr().(*net.TCPAddr).Port)
			if _, err := n.AddInlineRules(7979, 79, []uint16{port}); err != nil {
				t.Fatalf("AddInlineRules: %v", err)
			}
			if err := n.Commit(); err != nil {
				t.Fatal(err)
			}
			listing := netnstest.Nft(t, ns, "list", "chain", "inet", "ftpgate", "inspect_ftp_control")
			if want := "@ih,0,8 & 0x0 == 0x0 log group 79 accept"; strings.Count(listing, want) != 1 {
				t.Errorf("want one data rule %q:\n%s", want, listing)
			}
			l, err := capture.OpenLog(79, int(ns), classify)
			if err != nil {
				t.Fatalf("OpenLog: %v", err)
			}
			defer l.Close()
			lines := []string{"USER anonymous\r\n", "P", "ASV\r\n"}
			netnstest.In(t, ns, func() {
				c, err := net.Dial(tc.network, ctl.Addr().String())
				if err != nil {
					t.Fatalf("dial: %v", err)
				}
				s, err := ctl.Accept()
				if err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				for _, line := range lines {
					if _, err := c.Write([]byte(line)); err != nil {
						t.Fatal(err)
					}
					// Each write its own segment, acknowledged before the next.
					buf := make([]byte, len(line))
					if _, err := io.ReadFull(s, buf); err != nil {
						t.Fatal(err)
					}
					time.Sleep(50 * time.Millisecond)
				}
				c.Close()
			})
			time.Sleep(100 * time.Millisecond)
			// What ftpgate needs is every data segment at least once, in
			// order, and the SYN and FIN; how many copies a segment makes
			// is the kernel's business (6.18 copies a loopback segment at
			// both the output and the input hook, 6.1 once), so copies of
			// one segment (same direction and sequence number) count once.
			type segment struct {
				srcPort uint16
				seq     uint32
			}
			seen := map[segment]bool{}
			var data string
			var records, syns, fins int
			if err := l.Read(func(p *capture.Packet) {
				records++
				ip := p.Data
				hl := 40
				if ip[0]>>4 == 4 {
					hl = int(ip[0]&0x0f) * 4
				}
				tcp := ip[hl:]
				payload := tcp[int(tcp[12]>>4)*4:]
				const fin, syn, rst = 0x01, 0x02, 0x04
				if len(payload) == 0 && tcp[13]&(fin|syn|rst) == 0 {
					t.Errorf("pure ACK copied: flags %#02x", tcp[13])
				}
				if tcp[13]&syn != 0 {
					syns++
				}
				if tcp[13]&fin != 0 {
					fins++
				}
				key := segment{binary.BigEndian.Uint16(tcp[0:2]), binary.BigEndian.Uint32(tcp[4:8])}
				if len(payload) > 0 && !seen[key] {
					seen[key] = true
					data += string(payload)
				}
			}); err != nil {
				t.Fatalf("Drain: %v", err)
			}
			if want := strings.Join(lines, ""); data != want {
				t.Errorf("copied data %q, want %q (%d records)", data, want, records)
			}
			// The server's SYN-ACK (the client's SYN is held on the queue,
			// not copied) and both sides' FIN.
			if syns < 1 || fins < 2 {
				t.Errorf("copied %d SYNs and %d FINs, want the SYN-ACK and both FINs (%d records)", syns, fins, records)
			}
		})
	}
}
