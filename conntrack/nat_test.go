package conntrack

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/ftpgate/ftpgate/nat"
	"github.com/ftpgate/ftpgate/parser"
	"github.com/ftpgate/ftpgate/rules"
)

// The two NAT cases of the lab: a LAN client behind masquerade talking
// to a server on the internet, and an internet client talking to a
// server behind a port forward.
var (
	masqueraded = nat.Translation{
		Client: ap("192.0.2.2:40000"), Server: ap("203.0.113.10:21"),
		ServerSeen: ap("203.0.113.10:21"), ClientSeen: ap("203.0.113.1:51000"),
	}
	forwarded = nat.Translation{
		Client: ap("203.0.113.10:40000"), Server: ap("198.51.100.2:21"),
		ServerSeen: ap("203.0.113.1:21"), ClientSeen: ap("203.0.113.10:52000"),
	}
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// proxied is a harness session of the control proxy.
type proxied struct {
	*harness
	id      uint64
	through [2]uint32 // what the proxy has sent on of each side
}

func newProxied(t *testing.T, tr nat.Translation) *proxied {
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
	return strings.TrimSuffix(p.bytes(fromServer, l+"\r\n"), "\r\n")
}

// bytes passes a chunk through as the proxy reads it, and returns what
// goes on.
func (p *proxied) bytes(fromServer bool, chunk string) string {
	p.t.Helper()
	d, o := 0, 1
	if fromServer {
		d, o = 1, 0
	}
	out, through, closed := p.tr.ProxiedBytes(p.id, fromServer, []byte(chunk), p.through[o], p.ts)
	if closed {
		p.t.Fatalf("session closed on %q", chunk)
	}
	p.through[d] = through
	if err := p.tr.Commit(); err != nil {
		p.t.Fatal(err)
	}
	return string(out)
}

func dnat(peer, addr string, port uint16, to string) rules.Mapping {
	t := ap(to)
	return rules.Mapping{Peer: netip.MustParseAddr(peer), Addr: netip.MustParseAddr(addr), Port: port, ToAddr: t.Addr(), ToPort: t.Port()}
}

// TestNATActiveBehindMasquerade: a LAN client's PORT reaches the server
// as the gateway's public address and a port from ftpgate's range; that
// port is mapped back to the client only once the server has accepted
// the command, before its reply goes on.
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
			// Nothing the server could use before it accepted the command.
			if len(p.fw.Maps) != 0 || len(p.fw.Open) != 0 {
				t.Fatalf("before the server's reply: maps %v, pinholes %v", p.fw.Maps, p.fw.Open)
			}
			if got := p.server("200 PORT command successful"); got != "200 PORT command successful" {
				t.Errorf("reply changed: %q", got)
			}
			want := dnat("203.0.113.10", "203.0.113.1", pub.Port(), "192.0.2.2:40000")
			if _, ok := p.fw.Maps[want]; !ok || len(p.fw.Maps) != 1 {
				t.Fatalf("maps %v, want just %v", p.fw.Maps, want)
			}
			if !p.open()[pin("203.0.113.10", "192.0.2.2", 40000)] || len(p.fw.Open) != 1 {
				t.Fatalf("pinholes %v, want the server to the client's own port", p.fw.Open)
			}
			// Used: the kernel consumed the pinhole; the mapping goes too.
			p.tr.PinholeConsumed(pin("203.0.113.10", "192.0.2.2", 40000))
			p.tr.Commit()
			if len(p.fw.Maps) != 0 || p.tr.natPorts.Held() != 0 {
				t.Errorf("left after the data connection started: maps %v, ports %v", p.fw.Maps, p.tr.natPorts.Held())
			}
		})
	}
}

// TestNATActiveRefusedByServer: a PORT the server refuses never reaches
// the kernel, and its public port is free again.
func TestNATActiveRefusedByServer(t *testing.T) {
	p := newProxied(t, masqueraded)
	p.client("PORT 192,0,2,2,156,64")
	p.server("500 Illegal PORT command.")
	if len(p.fw.Maps) != 0 || len(p.fw.Open) != 0 || p.tr.natPorts.Held() != 0 {
		t.Errorf("after the server's 500: maps %v, pinholes %v, ports %v", p.fw.Maps, p.fw.Open, p.tr.natPorts.Held())
	}
	if last := p.channels[len(p.channels)-1]; last.Verdict != VerdictRefuse || last.Refusal != refusedByServer {
		t.Errorf("channel %+v", last)
	}
}

// TestNATNeverTheAnnouncedPublicPort: a client behind masquerade that
// names the gateway's public address and a port the admin forwards
// elsewhere (8080) gets a port of ftpgate's range instead: the public
// 8080 keeps going where the admin's rules send it. Ports the gateway
// listens on or forwards are never picked.
func TestNATNeverTheAnnouncedPublicPort(t *testing.T) {
	for _, verb := range []string{"PORT 203,0,113,1,31,144", "EPRT |1|203.0.113.1|8080|"} {
		t.Run(verb[:4], func(t *testing.T) {
			h := newHarness(t, Config{Inline: true, NATPorts: [2]uint16{61000, 61003},
				PublicPortInUse: func(ap netip.AddrPort) bool { return ap.Port() != 61002 }})
			p := &proxied{harness: h, id: 7}
			h.tr.OpenProxied(p.id, masqueraded, h.ts)
			p.server("220 hello")
			out := p.client(verb)
			cmd, err := parser.ParseCommand([]byte(out))
			if err != nil || cmd.Endpoint != ap("203.0.113.1:61002") {
				t.Fatalf("%q went on as %q (%v): want the one free port of the range", verb, out, err)
			}
			p.server("200 ok")
			for m := range p.fw.Maps {
				if m.Port == 8080 {
					t.Fatalf("mapping on the public port the client named: %v", m)
				}
			}
			want := dnat("203.0.113.10", "203.0.113.1", 61002, "192.0.2.2:8080")
			if _, ok := p.fw.Maps[want]; !ok {
				t.Fatalf("maps %v, want %v", p.fw.Maps, want)
			}
		})
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

// TestNATEPSVRewritten: a 229 names a port on the address the client
// connected to; that port is one of ftpgate's range, mapped to the
// server's.
func TestNATEPSVRewritten(t *testing.T) {
	p := newProxied(t, forwarded)
	p.client("EPSV")
	out := p.server("229 Entering Extended Passive Mode (|||40002|)")
	port, err := parser.ParseEPSVReply([]byte(out[4:]))
	if err != nil || port < DefaultNATPorts[0] {
		t.Fatalf("229 went on as %q (%v)", out, err)
	}
	want := dnat("203.0.113.10", "203.0.113.1", port, "198.51.100.2:40002")
	if _, ok := p.fw.Maps[want]; !ok {
		t.Fatalf("maps %v, want %v", p.fw.Maps, want)
	}
}

// TestNATPublicAddressAccepted: a server that already announces the
// public address (vsftpd pasv_address) is accepted and mapped, which the
// kernel's helper refuses; the port the far side gets is ftpgate's.
func TestNATPublicAddressAccepted(t *testing.T) {
	p := newProxied(t, forwarded)
	p.client("PASV")
	out := p.server("227 Entering Passive Mode (203,0,113,1,156,67).")
	pub, err := parser.ParsePASVReply([]byte(out[4:]))
	if err != nil || pub.Addr() != netip.MustParseAddr("203.0.113.1") || pub.Port() < DefaultNATPorts[0] {
		t.Fatalf("227 went on as %q (%v)", out, err)
	}
	want := dnat("203.0.113.10", "203.0.113.1", pub.Port(), "198.51.100.2:40003")
	if _, ok := p.fw.Maps[want]; !ok {
		t.Fatalf("maps %v, want %v", p.fw.Maps, want)
	}
	if len(p.channels) != 1 || p.channels[0].Verdict != VerdictOpen {
		t.Fatalf("channels %+v", p.channels)
	}
}

// TestNATActiveToServerBehindPortForward: the internet client's PORT
// needs no rewrite; once the server accepts it, its data connection
// leaves with the public address the client connected to.
func TestNATActiveToServerBehindPortForward(t *testing.T) {
	p := newProxied(t, forwarded)
	if out := p.client("PORT 203,0,113,10,156,68"); out != "PORT 203,0,113,10,156,68" {
		t.Errorf("PORT rewritten: %q", out)
	}
	if len(p.fw.Maps) != 0 {
		t.Fatalf("mapped before the server's reply: %v", p.fw.Maps)
	}
	p.server("200 ok")
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

// TestNATFramingOfLongLines: the proxy frames lines as the tracker
// frames copies, with one limit: a line too long goes on as it is, every
// byte, and no part of it is parsed, however it was cut into reads.
func TestNATFramingOfLongLines(t *testing.T) {
	junk := strings.Repeat("x", 4100)
	t.Run("client line ending in PORT", func(t *testing.T) {
		p := newProxied(t, masqueraded)
		in := junk + " PORT 192,0,2,2,156,64\r\n"
		var out strings.Builder
		for i := 0; i < len(in); i += 1000 {
			out.WriteString(p.bytes(false, in[i:min(i+1000, len(in))]))
		}
		if out.String() != in {
			t.Fatalf("a line too long did not go on as it came: %d bytes of %d", out.Len(), len(in))
		}
		p.server("500 Unknown command.")
		p.client("PORT 192,0,2,2,156,65")
		p.server("200 ok")
		if len(p.fw.Maps) != 0 || len(p.fw.Open) != 0 {
			t.Fatalf("after a line too long, pairing is uncertain: maps %v pinholes %v", p.fw.Maps, p.fw.Open)
		}
	})
	t.Run("server reply whose tail is a 227", func(t *testing.T) {
		p := newProxied(t, forwarded)
		p.client("PASV")
		in := "500 " + junk + "\n227 Entering Passive Mode (198,51,100,2,21,56)\r\n"
		if out := p.bytes(true, in); out != in {
			t.Fatalf("went on as %q", out)
		}
		if len(p.fw.Maps) != 0 || len(p.fw.Open) != 0 {
			t.Fatalf("the tail of a reply line too long was mapped: %v %v", p.fw.Maps, p.fw.Open)
		}
	})
	t.Run("a line in pieces", func(t *testing.T) {
		p := newProxied(t, masqueraded)
		if out := p.bytes(false, "PORT 192,0,"); out != "" {
			t.Fatalf("half a line went on: %q", out)
		}
		out := p.bytes(false, "2,2,156,64\r\n")
		if !strings.HasPrefix(out, "PORT 203,0,113,1,") {
			t.Fatalf("rewritten as %q", out)
		}
	})
}

// TestNATEchoedLineStartsNoReply: a server that ends its lines with CR LF
// and echoes a raw LF of the client's argument does not start a reply at
// it: the echoed 227, pipelined behind a PASV, maps nothing; the real 227
// that follows maps the real port.
func TestNATEchoedLineStartsNoReply(t *testing.T) {
	p := newProxied(t, forwarded)
	p.bytes(false, "MKD x\n227 Entering Passive Mode (198,51,100,2,21,56)\n150 x\r\nPASV\r\n")
	p.bytes(true, "257 \"x\n227 Entering Passive Mode (198,51,100,2,21,56)\n150 x\" created\r\n")
	for m := range p.fw.Maps {
		t.Fatalf("the echoed 227 was mapped: %v", m)
	}
	p.server("227 Entering Passive Mode (198,51,100,2,156,80)")
	want := rules.Pinhole{Peer: netip.MustParseAddr("203.0.113.10"), Addr: netip.MustParseAddr("198.51.100.2"), Port: 156*256 + 80}
	if len(p.fw.Open) != 1 || !p.open()[want] {
		t.Fatalf("the PASV's own 227: pinholes %v, want %v", p.fw.Open, want)
	}
}

// TestNATLongSession: many transfers on one session, each rewritten to a
// port of its own, none left behind; ports are spread over the range.
func TestNATLongSession(t *testing.T) {
	p := newProxied(t, forwarded)
	seen := map[uint16]bool{}
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
		p.client("RETR f")
		p.server("150 here")
		p.server("226 done")
	}
	if len(seen) < 55 {
		t.Errorf("60 rewrites used only %d ports", len(seen))
	}
	p.tr.CloseProxied(p.id, "closed by the client", p.ts)
	p.tr.Commit()
	if len(p.fw.Maps) != 0 || len(p.fw.Open) != 0 || p.tr.natPorts.Held() != 0 {
		t.Errorf("after the session: maps %v, pinholes %v, ports held %v", p.fw.Maps, p.fw.Open, p.tr.natPorts.Held())
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
		p := &proxied{harness: h, id: uint64(100 + i)}
		h.tr.OpenProxied(p.id, tr, h.ts)
		p.server("220 hi")
		p.client("PASV")
		out := p.server("227 Entering Passive Mode (198,51,100,2,156,64)")
		pub, _ := parser.ParsePASVReply([]byte(out[4:]))
		if i == 10 {
			if strings.Contains(out, "203,0,113,1") {
				t.Errorf("eleventh mapping got a port: %q", out)
			}
			continue
		}
		if used[pub.Port()] || pub.Port() < 61000 || pub.Port() > 61009 {
			t.Fatalf("mapping %d: port %d reused or out of range (%q)", i, pub.Port(), out)
		}
		used[pub.Port()] = true
	}
	if last := h.channels[len(h.channels)-1]; last.Verdict != VerdictRefuse || last.Refusal != refusedNAT {
		t.Errorf("eleventh: %v %q", last.Verdict, last.Reason)
	}
}

// TestNATMultiLineAndTLS: a multi-line 227 goes on whole with its last
// line; other multi-line replies line by line; after a 234 to AUTH the
// bytes go on as they come.
func TestNATMultiLineAndTLS(t *testing.T) {
	p := newProxied(t, forwarded)
	p.client("FEAT")
	if out := p.server("211-Features:"); out != "211-Features:" {
		t.Errorf("first line of a FEAT reply held: %q", out)
	}
	p.server("211 End")
	p.client("PASV")
	if out := p.server("227-Entering Passive Mode"); out != "" {
		t.Errorf("first line of a multi-line 227 went on alone: %q", out)
	}
	out := p.server("227 (198,51,100,2,156,90)")
	if !strings.HasPrefix(out, "227 Entering Passive Mode (203,0,113,1,") || strings.Contains(out, "227-") {
		t.Errorf("multi-line 227 went on as %q", out)
	}
	p.client("AUTH TLS")
	p.server("234 Proceed")
	hello := "\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"
	if out := p.bytes(false, hello); out != hello {
		t.Errorf("TLS went on as %q", out)
	}
}

// FuzzProxiedLines feeds arbitrary chunks, both ways, to sessions of the
// control proxy under both translations. Whatever comes, nothing panics,
// every byte goes on or is held (a line still to end, a multi-line
// announcement reply) and nothing is lost or duplicated unless a line was
// rewritten, every mapping belongs to an open pinhole, every picked port
// is in the range, and closing the session leaves nothing.
func FuzzProxiedLines(f *testing.F) {
	f.Add([]byte("PASV\n<227 Entering Passive Mode (198,51,100,2,156,64)\nPORT 192,0,2,2,1,2\n<200 ok\n"), false)
	f.Add([]byte("EPRT |1|192.0.2.2|40000|\n<500 no\nEPSV\n<229 (|||40001|)\n"), true)
	f.Add([]byte("FEAT\n<211-x\n<227 (198,51,100,2,1,1)\n<211 end\nAUTH TLS\n<234 go\n"), false)
	f.Fuzz(func(t *testing.T, script []byte, masq bool) {
		h := &harness{t: t, fw: rules.NewDryRun()}
		h.tr = NewTracker(Config{Inline: true, NATPorts: [2]uint16{61000, 61015}, MaxLineLength: 64}, h.fw)
		tr := forwarded
		if masq {
			tr = masqueraded
		}
		p := &proxied{harness: h, id: 1}
		h.tr.OpenProxied(1, tr, h.ts)
		p.bytes(true, "220 hi\r\n")
		var in, out [2]strings.Builder
		rewritten := false
		for _, l := range strings.Split(string(script), "\n") {
			fromServer := strings.HasPrefix(l, "<")
			l = strings.TrimPrefix(l, "<") + "\r\n"
			d := 0
			if fromServer {
				d = 1
			}
			in[d].WriteString(l)
			o := p.bytes(fromServer, l)
			out[d].WriteString(o)
			if !strings.HasPrefix(in[d].String(), out[d].String()) {
				rewritten = true
			}
			for m := range h.fw.Maps {
				if m.SNAT {
					continue
				}
				pp := rules.Pinhole{Peer: m.Peer, Addr: m.ToAddr, Port: m.ToPort}
				if _, ok := h.fw.Open[pp]; !ok {
					t.Fatalf("mapping %v without its pinhole %v (open: %v)", m, pp, h.fw.Open)
				}
				if m.Port < 61000 || m.Port > 61015 {
					t.Fatalf("mapping %v: public port outside the range", m)
				}
			}
		}
		if !rewritten {
			for d := range 2 {
				if !strings.HasPrefix(in[d].String(), out[d].String()) {
					t.Fatalf("direction %d: %q went on for %q", d, out[d].String(), in[d].String())
				}
			}
			if in[0].String() != out[0].String() {
				t.Fatalf("client bytes held or lost: %q went on for %q", out[0].String(), in[0].String())
			}
		}
		h.tr.CloseProxied(1, "closed", h.ts)
		h.tr.Commit()
		if len(h.fw.Maps) != 0 || len(h.fw.Open) != 0 || h.tr.natPorts.Held() != 0 {
			t.Fatalf("left after the session: maps %v, pinholes %v, ports %v", h.fw.Maps, h.fw.Open, h.tr.natPorts.Held())
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
		p := &proxied{harness: h, id: id}
		h.tr.OpenProxied(id, tr, h.ts)
		p.server("220 hi")
		p.client("PASV")
		p.server("227 Entering Passive Mode (198,51,100,2,156,64)")
	}
	if len(h.fw.Maps) != 1 || h.tr.natPorts.Held() != 1 {
		t.Fatalf("after the second session took the pinhole over: maps %v, ports held %v", h.fw.Maps, h.tr.natPorts.Held())
	}
	h.tr.CloseAll("stop")
	h.tr.Commit()
	if len(h.fw.Maps) != 0 || h.tr.natPorts.Held() != 0 {
		t.Fatalf("after stop: maps %v, ports held %v", h.fw.Maps, h.tr.natPorts.Held())
	}
}
