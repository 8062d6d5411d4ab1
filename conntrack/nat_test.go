package conntrack

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/ftpgate/ftpgate/parser"
	"github.com/ftpgate/ftpgate/rules"
)

// The two NAT cases of the lab: a LAN client behind masquerade talking
// to a server on the internet, and an internet client talking to a
// server behind a port forward.
var (
	masqueraded = Translation{
		Client: ap("192.0.2.2:40000"), Server: ap("203.0.113.10:21"),
		ServerSeen: ap("203.0.113.10:21"), ClientSeen: ap("203.0.113.1:51000"),
	}
	forwarded = Translation{
		Client: ap("203.0.113.10:40000"), Server: ap("198.51.100.2:21"),
		ServerSeen: ap("203.0.113.1:21"), ClientSeen: ap("203.0.113.10:52000"),
	}
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// proxied is a harness session of the control proxy.
type proxied struct {
	*harness
	id uint64
}

func newProxied(t *testing.T, tr Translation) *proxied {
	h := newHarness(t, Config{Inline: true})
	p := &proxied{harness: h, id: 7}
	h.tr.OpenProxied(p.id, tr, h.ts)
	p.server("220 hello")
	return p
}

// client and server pass one line through and return what goes on,
// after committing as the daemon does before sending it.
func (p *proxied) client(line string) string { return p.line(false, line) }
func (p *proxied) server(line string) string { return p.line(true, line) }

func (p *proxied) line(fromServer bool, l string) string {
	p.t.Helper()
	out, _ := p.tr.ProxiedLine(p.id, fromServer, false, []byte(l+"\r\n"), p.ts)
	if err := p.tr.Commit(); err != nil {
		p.t.Fatal(err)
	}
	return strings.TrimSuffix(string(out), "\r\n")
}

func dnat(peer, addr string, port uint16, to string) rules.Mapping {
	t := ap(to)
	return rules.Mapping{Peer: netip.MustParseAddr(peer), Addr: netip.MustParseAddr(addr), Port: port, ToAddr: t.Addr(), ToPort: t.Port()}
}

// TestNATActiveBehindMasquerade: a LAN client's PORT reaches the server
// as the gateway's public address and a port from ftpgate's range, and
// that port is mapped back to the client before the server sees it.
func TestNATActiveBehindMasquerade(t *testing.T) {
	for _, verb := range []string{"PORT 192,0,2,2,156,64", "EPRT |1|192.0.2.2|40000|"} {
		t.Run(verb[:4], func(t *testing.T) {
			p := newProxied(t, masqueraded)
			out := p.client(verb)
			cmd, err := parser.ParseCommand([]byte(out))
			if err != nil {
				t.Fatalf("rewritten %q does not parse: %v", out, err)
			}
			pub := cmd.Endpoint
			if pub.Addr() != netip.MustParseAddr("203.0.113.1") || pub.Port() < DefaultNATPorts[0] {
				t.Fatalf("%q went on as %q: want the public address and a port from %v", verb, out, DefaultNATPorts)
			}
			if cmd.Verb.String() != verb[:4] {
				t.Errorf("rewritten as %s, want %s", cmd.Verb, verb[:4])
			}
			// The mapping and the pinhole are committed before the line goes on.
			want := dnat("203.0.113.10", "203.0.113.1", pub.Port(), "192.0.2.2:40000")
			if _, ok := p.fw.Maps[want]; !ok || len(p.fw.Maps) != 1 {
				t.Fatalf("maps %v, want just %v", p.fw.Maps, want)
			}
			if !p.open()[pin("203.0.113.10", "192.0.2.2", 40000)] || len(p.fw.Open) != 1 {
				t.Fatalf("pinholes %v, want the server to the client's own port", p.fw.Open)
			}
			if got := p.server("200 PORT command successful"); got != "200 PORT command successful" {
				t.Errorf("reply changed: %q", got)
			}
			// Used: the kernel consumed the pinhole; the mapping goes too.
			p.tr.PinholeConsumed(pin("203.0.113.10", "192.0.2.2", 40000))
			p.tr.Commit()
			if len(p.fw.Maps) != 0 {
				t.Errorf("maps left after the data connection started: %v", p.fw.Maps)
			}
		})
	}
}

// TestNATActiveRefusedByServer: the mapping made for a PORT goes when the
// server refuses it.
func TestNATActiveRefusedByServer(t *testing.T) {
	p := newProxied(t, masqueraded)
	p.client("PORT 192,0,2,2,156,64")
	if len(p.fw.Maps) != 1 {
		t.Fatalf("maps %v", p.fw.Maps)
	}
	p.server("500 Illegal PORT command.")
	if len(p.fw.Maps) != 0 || len(p.fw.Open) != 0 {
		t.Errorf("after the server's 500: maps %v, pinholes %v", p.fw.Maps, p.fw.Open)
	}
}

// TestNATPassiveBehindPortForward: a DMZ server's 227 with its private
// address reaches the client as the public address it connected to.
func TestNATPassiveBehindPortForward(t *testing.T) {
	p := newProxied(t, forwarded)
	p.client("PASV")
	out := p.server("227 Entering Passive Mode (198,51,100,2,156,65)")
	pub, err := parser.ParsePASVReply([]byte(out[4:]))
	if err != nil || !strings.HasPrefix(out, "227 ") {
		t.Fatalf("rewritten %q: %v", out, err)
	}
	if pub.Addr() != netip.MustParseAddr("203.0.113.1") || pub.Port() < DefaultNATPorts[0] {
		t.Fatalf("227 went on as %q", out)
	}
	want := dnat("203.0.113.10", "203.0.113.1", pub.Port(), "198.51.100.2:40001")
	if _, ok := p.fw.Maps[want]; !ok || len(p.fw.Maps) != 1 {
		t.Fatalf("maps %v, want %v", p.fw.Maps, want)
	}
	if !p.open()[pin("203.0.113.10", "198.51.100.2", 40001)] {
		t.Fatalf("pinholes %v", p.fw.Open)
	}
}

// TestNATEPSVMapsWithoutRewrite: a 229 carries no address: it goes on
// as it is, and the announced port is mapped on the public address.
func TestNATEPSVMapsWithoutRewrite(t *testing.T) {
	p := newProxied(t, forwarded)
	p.client("EPSV")
	if out := p.server("229 Entering Extended Passive Mode (|||40002|)"); out != "229 Entering Extended Passive Mode (|||40002|)" {
		t.Errorf("229 rewritten: %q", out)
	}
	want := dnat("203.0.113.10", "203.0.113.1", 40002, "198.51.100.2:40002")
	if _, ok := p.fw.Maps[want]; !ok {
		t.Fatalf("maps %v, want %v", p.fw.Maps, want)
	}
}

// TestNATPublicAddressAccepted: a server that already announces the
// public address (vsftpd pasv_address) is accepted and mapped, which the
// kernel's helper refuses.
func TestNATPublicAddressAccepted(t *testing.T) {
	p := newProxied(t, forwarded)
	p.client("PASV")
	if out := p.server("227 Entering Passive Mode (203,0,113,1,156,67)."); out != "227 Entering Passive Mode (203,0,113,1,156,67)." {
		t.Errorf("227 rewritten: %q", out)
	}
	want := dnat("203.0.113.10", "203.0.113.1", 40003, "198.51.100.2:40003")
	if _, ok := p.fw.Maps[want]; !ok {
		t.Fatalf("maps %v, want %v", p.fw.Maps, want)
	}
	if len(p.channels) != 1 || p.channels[0].Verdict != VerdictOpen {
		t.Fatalf("channels %+v", p.channels)
	}
}

// TestNATActiveToServerBehindPortForward: the internet client's PORT
// needs no rewrite; the server's data connection leaves with the public
// address the client connected to.
func TestNATActiveToServerBehindPortForward(t *testing.T) {
	p := newProxied(t, forwarded)
	if out := p.client("PORT 203,0,113,10,156,68"); out != "PORT 203,0,113,10,156,68" {
		t.Errorf("PORT rewritten: %q", out)
	}
	snat := rules.Mapping{SNAT: true, Peer: netip.MustParseAddr("198.51.100.2"), Addr: netip.MustParseAddr("203.0.113.10"), Port: 40004,
		ToAddr: netip.MustParseAddr("203.0.113.1")}
	if _, ok := p.fw.Maps[snat]; !ok || len(p.fw.Maps) != 1 {
		t.Fatalf("maps %v, want %v", p.fw.Maps, snat)
	}
	if !p.open()[pin("198.51.100.2", "203.0.113.10", 40004)] {
		t.Fatalf("pinholes %v", p.fw.Open)
	}
}

// TestNATRefusals: an address that is the announcer's on neither side is
// refused as before; the line goes on unchanged and nothing is mapped.
func TestNATRefusals(t *testing.T) {
	p := newProxied(t, forwarded)
	p.client("PASV")
	if out := p.server("227 Entering Passive Mode (192,0,2,99,156,69)"); !strings.Contains(out, "192,0,2,99") {
		t.Errorf("refused 227 changed: %q", out)
	}
	p.client("PORT 198,51,100,7,156,70")
	p.server("200 ok")
	if len(p.fw.Maps) != 0 || len(p.fw.Open) != 0 {
		t.Fatalf("maps %v, pinholes %v", p.fw.Maps, p.fw.Open)
	}
	if len(p.channels) != 2 {
		t.Fatalf("channels %+v", p.channels)
	}
	// The server is translated, the client is not.
	for i, want := range []string{"the server's address on neither side of the NAT (198.51.100.2, 203.0.113.1)",
		"not the client's control address 203.0.113.10"} {
		if ch := p.channels[i]; ch.Verdict != VerdictRefuse || !strings.Contains(ch.Reason, want) {
			t.Errorf("%s: %v %q, want %q", ch.Command, ch.Verdict, ch.Reason, want)
		}
	}
	// An unsolicited 227 is refused on a proxied session too.
	if out := p.server("227 Entering Passive Mode (198,51,100,2,156,71)"); !strings.Contains(out, "198,51,100,2") {
		t.Errorf("unsolicited 227 rewritten: %q", out)
	}
	if len(p.fw.Maps) != 0 {
		t.Errorf("unsolicited 227 mapped: %v", p.fw.Maps)
	}
}

// TestNATLongSession: many transfers on one session, each rewritten to a
// port of its own, none left behind; ports are spread over the range.
func TestNATLongSession(t *testing.T) {
	p := newProxied(t, forwarded)
	seen := map[uint16]bool{}
	prev := 0
	for i := range 60 {
		p.client("PASV")
		out := p.server(fmt.Sprintf("227 Entering Passive Mode (198,51,100,2,%d,%d)", 156+i/256, i%256))
		pub, err := parser.ParsePASVReply([]byte(out[4:]))
		if err != nil {
			t.Fatalf("transfer %d: %q: %v", i, out, err)
		}
		seen[pub.Port()] = true
		if len(p.fw.Maps) != 1 || len(p.fw.Open) != 1 {
			t.Fatalf("transfer %d: maps %v pinholes %v: the previous one was not superseded", i, p.fw.Maps, p.fw.Open)
		}
		if i > 0 && int(pub.Port()) == prev+1 {
			t.Logf("transfer %d: port %d follows %d", i, pub.Port(), prev)
		}
		prev = int(pub.Port())
		p.client("RETR f")
		p.server("150 here")
		p.server("226 done")
	}
	if len(seen) < 55 {
		t.Errorf("60 rewrites used only %d ports", len(seen))
	}
	p.tr.CloseProxied(p.id, "closed by the client", p.ts)
	p.tr.Commit()
	if len(p.fw.Maps) != 0 || len(p.fw.Open) != 0 || len(p.tr.nat.used) != 0 {
		t.Errorf("after the session: maps %v, pinholes %v, ports held %v", p.fw.Maps, p.fw.Open, p.tr.nat.used)
	}
}

// TestNATPortsNeverCollide: with a range of ten ports, ten live mappings
// take all ten, and the eleventh is refused rather than reuse one.
func TestNATPortsNeverCollide(t *testing.T) {
	h := newHarness(t, Config{Inline: true, NATPorts: [2]uint16{61000, 61009}, MaxPinholesPerSession: 2})
	used := map[uint16]bool{}
	for i := range 11 {
		tr := forwarded
		tr.Client = netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(20 + i)}), 40000)
		id := uint64(100 + i)
		h.tr.OpenProxied(id, tr, h.ts)
		h.tr.ProxiedLine(id, true, false, []byte("220 hi\r\n"), h.ts)
		h.tr.ProxiedLine(id, false, false, []byte("PASV\r\n"), h.ts)
		out, _ := h.tr.ProxiedLine(id, true, false, []byte("227 Entering Passive Mode (198,51,100,2,156,64)\r\n"), h.ts)
		pub, _ := parser.ParsePASVReply(out[4:])
		if i == 10 {
			if strings.Contains(string(out), "203,0,113,1") {
				t.Errorf("eleventh mapping got a port: %q", out)
			}
			continue
		}
		if used[pub.Port()] || pub.Port() < 61000 || pub.Port() > 61009 {
			t.Fatalf("mapping %d: port %d reused or out of range (%q)", i, pub.Port(), out)
		}
		used[pub.Port()] = true
	}
	if last := h.channels[len(h.channels)-1]; last.Verdict != VerdictRefuse || !strings.Contains(last.Reason, "no free NAT port") {
		t.Errorf("eleventh: %v %q", last.Verdict, last.Reason)
	}
}

// TestNATMultiLineAndTLS: a multi-line reply goes on whole with its last
// line; a 234 turns the session raw.
func TestNATMultiLineAndTLS(t *testing.T) {
	p := newProxied(t, forwarded)
	p.client("FEAT")
	if out := p.server("211-Features:"); out != "" {
		t.Errorf("first line of a multi-line reply went on alone: %q", out)
	}
	if out := p.server("211 End"); out != "211-Features:\r\n211 End" {
		t.Errorf("multi-line reply: %q", out)
	}
	p.client("AUTH TLS")
	out, raw := p.tr.ProxiedLine(p.id, true, false, []byte("234 Proceed\r\n"), p.ts)
	if string(out) != "234 Proceed\r\n" || !raw {
		t.Errorf("234: %q raw=%v", out, raw)
	}
}

// FuzzProxiedLines feeds arbitrary lines, both ways, to sessions of the
// control proxy under both translations. Whatever comes, nothing panics,
// every mapping belongs to an open pinhole, every picked port is in the
// range, a rewritten line parses as what it replaces, and closing the
// session leaves nothing.
func FuzzProxiedLines(f *testing.F) {
	f.Add([]byte("PASV\n<227 Entering Passive Mode (198,51,100,2,156,64)\nPORT 192,0,2,2,1,2\n<200 ok\n"), false)
	f.Add([]byte("EPRT |1|192.0.2.2|40000|\n<500 no\nEPSV\n<229 (|||40001|)\n"), true)
	f.Add([]byte("FEAT\n<211-x\n<227 (198,51,100,2,1,1)\n<211 end\nAUTH TLS\n<234 go\n"), false)
	f.Fuzz(func(t *testing.T, script []byte, masq bool) {
		h := &harness{t: t, fw: rules.NewDryRun()}
		h.tr = NewTracker(Config{Inline: true, NATPorts: [2]uint16{61000, 61015}}, h.fw)
		tr := forwarded
		if masq {
			tr = masqueraded
		}
		h.tr.OpenProxied(1, tr, h.ts)
		h.tr.ProxiedLine(1, true, false, []byte("220 hi\r\n"), h.ts)
		for _, l := range strings.Split(string(script), "\n") {
			fromServer := strings.HasPrefix(l, "<")
			l = strings.TrimPrefix(l, "<")
			out, _ := h.tr.ProxiedLine(1, fromServer, false, []byte(l+"\r\n"), h.ts)
			if err := h.tr.Commit(); err != nil {
				t.Fatal(err)
			}
			if string(out) != l+"\r\n" && len(out) > 0 && !strings.HasPrefix(l, "211") {
				// Rewritten: it must parse as the same kind of line.
				if fromServer {
					if r := parser.ParseReplyLine(bytes.TrimRight(out, "\r\n")); r.Code == 0 {
						t.Fatalf("%q rewritten to %q, not a reply", l, out)
					}
				} else if c, err := parser.ParseCommand(bytes.TrimRight(out, "\r\n")); err != nil || !c.Verb.IsActive() {
					t.Fatalf("%q rewritten to %q: %v", l, out, err)
				}
			}
			for m := range h.fw.Maps {
				if m.SNAT {
					continue
				}
				p := rules.Pinhole{Peer: m.Peer, Addr: m.ToAddr, Port: m.ToPort}
				if _, ok := h.fw.Open[p]; !ok {
					t.Fatalf("mapping %v without its pinhole %v (open: %v)", m, p, h.fw.Open)
				}
				if m.Addr == tr.ServerSeen.Addr() || m.Addr == tr.ClientSeen.Addr() {
					if m.Port != m.ToPort && (m.Port < 61000 || m.Port > 61015) {
						t.Fatalf("mapping %v: picked port outside the range", m)
					}
				}
			}
		}
		h.tr.CloseProxied(1, "closed", h.ts)
		h.tr.Commit()
		if len(h.fw.Maps) != 0 || len(h.fw.Open) != 0 || len(h.tr.nat.used) != 0 {
			t.Fatalf("left after the session: maps %v, pinholes %v, ports %v", h.fw.Maps, h.fw.Open, h.tr.nat.used)
		}
	})
}

// TestNATReplacedPinholeUnmaps: when a second session's announcement
// takes over an open pinhole (a server reusing a passive port), the first
// one's mapping and public port go.
func TestNATReplacedPinholeUnmaps(t *testing.T) {
	h := newHarness(t, Config{Inline: true})
	for id := uint64(1); id <= 2; id++ {
		tr := forwarded
		tr.Client = netip.AddrPortFrom(tr.Client.Addr(), 40000+uint16(id))
		h.tr.OpenProxied(id, tr, h.ts)
		h.tr.ProxiedLine(id, true, false, []byte("220 hi\r\n"), h.ts)
		h.tr.ProxiedLine(id, false, false, []byte("PASV\r\n"), h.ts)
		h.tr.ProxiedLine(id, true, false, []byte("227 Entering Passive Mode (198,51,100,2,156,64)\r\n"), h.ts)
		h.tr.Commit()
	}
	if len(h.fw.Maps) != 1 || len(h.tr.nat.used) != 1 {
		t.Fatalf("after the second session took the pinhole over: maps %v, ports held %v", h.fw.Maps, h.tr.nat.used)
	}
	h.tr.CloseAll("stop")
	h.tr.Commit()
	if len(h.fw.Maps) != 0 || len(h.tr.nat.used) != 0 {
		t.Fatalf("after stop: maps %v, ports held %v", h.fw.Maps, h.tr.nat.used)
	}
}
