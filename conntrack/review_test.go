package conntrack

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ftpgate/ftpgate/nat"
)

// Regressions found by an attacker's reading of the NAT, framing and FTPS
// changes.

// TestNATPlannedPortAnsweredOddly: a PORT answered with a 227, 229 or 234
// gives its public port back; ten such rounds in one session leave the
// range free for the next client.
func TestNATPlannedPortAnsweredOddly(t *testing.T) {
	for _, reply := range []string{"229 Entering Extended Passive Mode (|||40000|)", "227 x", "234 AUTH ok"} {
		t.Run(reply[:3], func(t *testing.T) {
			h := newHarness(t, Config{Inline: true, NATPorts: [2]uint16{61000, 61009}})
			p := &proxied{harness: h, id: 7}
			h.tr.OpenProxied(p.id, masqueraded, h.ts)
			p.server("220 hello")
			for range 10 {
				p.client("PORT 192,0,2,2,156,64")
				p.server(reply)
				p.client("NOOP")
				p.server("200 ok")
			}
			if n := h.tr.natPorts.Held(); n != 0 {
				t.Fatalf("%d public ports held by PORTs answered with %s", n, reply[:3])
			}
			h.tr.CloseProxied(p.id, "bye", h.ts)
			v := nat.Translation{Client: ap("192.0.2.3:40001"), Server: ap("203.0.113.20:21"), ServerSeen: ap("203.0.113.20:21"), ClientSeen: ap("203.0.113.1:51001")}
			q := &proxied{harness: h, id: 8}
			h.tr.OpenProxied(q.id, v, h.ts)
			q.server("220 hello")
			q.client("PORT 192,0,2,3,156,64")
			q.server("200 ok")
			if last := h.channels[len(h.channels)-1]; last.Verdict != VerdictOpen {
				t.Errorf("the next client's PORT: %s", last.Reason)
			}
		})
	}
}

// TestNATPortShare: one client holds at most its share of --nat-ports;
// another client still gets one.
func TestNATPortShare(t *testing.T) {
	h := newHarness(t, Config{Inline: true, NATPorts: [2]uint16{61000, 61011}, NATPortsPerClient: 8})
	for i := range 3 {
		tr := forwarded
		tr.Client = ap(fmt.Sprintf("203.0.113.10:%d", 40000+i))
		p := &proxied{harness: h, id: uint64(10 + i)}
		h.tr.OpenProxied(p.id, tr, h.ts)
		p.server("220 hello")
		p.bytes(false, "PASV\r\nPASV\r\nPASV\r\nPASV\r\n")
		for j := range 4 {
			p.server(fmt.Sprintf("227 Entering Passive Mode (198,51,100,2,%d,%d)", 160+i, j))
		}
	}
	if n := h.tr.natPorts.Held(); n != 8 {
		t.Fatalf("one client holds %d public ports, want its share of 8", n)
	}
	tr := forwarded
	tr.Client = ap("198.18.0.9:40000")
	q := &proxied{harness: h, id: 99}
	h.tr.OpenProxied(q.id, tr, h.ts)
	q.server("220 hello")
	q.client("PASV")
	q.server("227 Entering Passive Mode (198,51,100,2,200,1)")
	if last := h.channels[len(h.channels)-1]; last.Verdict != VerdictOpen {
		t.Errorf("another client refused: %s", last.Reason)
	}
}

// TestNATPortChecksBounded: a read full of PORT lines asks
// PublicPortInUse a bounded number of times per line, also when every
// port reads as taken.
func TestNATPortChecksBounded(t *testing.T) {
	for _, all := range []bool{false, true} {
		calls := 0
		h := newHarness(t, Config{Inline: true, PublicPortInUse: func(netip.AddrPort) bool { calls++; return all }})
		p := &proxied{harness: h, id: 7}
		h.tr.OpenProxied(p.id, masqueraded, h.ts)
		p.server("220 hello")
		p.bytes(false, strings.Repeat("PORT 192,0,2,2,156,64\r\n", 178))
		if limit := maxPending * nat.MaxPortChecks; calls > limit {
			t.Errorf("all in use=%v: %d checks for 178 lines, want at most %d", all, calls, limit)
		}
	}
}

// TestBlankRunWithABareLF: a run of empty lines with a bare LF anywhere
// in it leaves pairing uncertain, so a PORT the server refused never
// pairs with the next 200.
func TestBlankRunWithABareLF(t *testing.T) {
	h, c := session(t, Config{})
	h.feed(c.send(true, "\n\r\n"), c.send(false, "500 Unknown command\r\n"))
	h.feed(c.send(true, "PORT 192,0,2,10,156,64\r\n"), c.send(false, "501 Rejected\r\n"))
	h.feed(c.send(true, "NOOP\r\n"), c.send(false, "200 NOOP ok\r\n"))
	if len(h.open()) != 0 {
		t.Errorf("a PORT the server refused opened: %v", h.open())
	}
}

// TestNATServerBytesInOrder: a line too long between the held lines of a
// multi-line 227 goes on after them, not before.
func TestNATServerBytesInOrder(t *testing.T) {
	p := newProxied(t, forwarded)
	p.client("PASV")
	long := "227-" + strings.Repeat("a", 3000) + "\r\n"
	in := "227-Entering\r\n" + long + "227 done\r\n"
	if out := p.bytes(true, in); out != in {
		t.Errorf("server bytes reordered: %.40q..., want %.40q...", out, in)
	}
}

// TestReloadProxied: a reload that takes a proxied session's control
// port away ends it; a PORT planned before a reload that refuses active
// mode to its server does not open on the server's 200.
func TestReloadProxied(t *testing.T) {
	base := Reconfigurable{MinDataPort: 1024, PinholeTimeout: time.Minute, IdleTimeout: time.Hour, HandshakeTimeout: 10 * time.Second,
		MaxPinholesPerSession: 4, ControlPorts: []uint16{21}, ImplicitPorts: []uint16{990}}
	t.Run("control port removed", func(t *testing.T) {
		var closed []uint64
		h := newHarness(t, Config{Inline: true, ControlPorts: []uint16{21, 2121}, ProxyConns: closeConnFunc(func(id uint64) { closed = append(closed, id) })})
		tr := forwarded
		tr.Server, tr.ServerSeen = ap("198.51.100.2:2121"), ap("203.0.113.1:2121")
		p := &proxied{harness: h, id: 7}
		h.tr.OpenProxied(p.id, tr, h.ts)
		p.server("220 hello")
		if done := h.tr.Reconfigure(base); done.SessionsEnded != 1 || fmt.Sprint(closed) != "[7]" {
			t.Errorf("port 2121 removed: %+v, proxy told to close %v", done, closed)
		}
	})
	t.Run("planned PORT", func(t *testing.T) {
		h := newHarness(t, Config{Inline: true})
		p := &proxied{harness: h, id: 7}
		h.tr.OpenProxied(p.id, masqueraded, h.ts)
		p.server("220 hello")
		p.client("PORT 192,0,2,2,156,64")
		r := base
		r.Servers = []ServerPolicy{{Prefix: netip.MustParsePrefix("203.0.113.10/32"), NoActive: true}}
		h.tr.Reconfigure(r)
		p.server("200 PORT ok")
		if len(h.fw.Open) != 0 || len(h.fw.Maps) != 0 || h.tr.natPorts.Held() != 0 {
			t.Errorf("opened after the reload refused it: %v %v, ports %v", h.fw.Open, h.fw.Maps, h.tr.natPorts.Held())
		}
	})
}
