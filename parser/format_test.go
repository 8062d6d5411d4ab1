package parser

import (
	"net/netip"
	"testing"
)

func TestFormatters(t *testing.T) {
	v4 := netip.MustParseAddrPort("203.0.113.1:50000")
	v6 := netip.MustParseAddrPort("[2001:db8::1]:50001")
	for _, tc := range []struct {
		name string
		got  func() ([]byte, error)
		want string
	}{
		{"PORT", func() ([]byte, error) { return AppendPORT(nil, v4) }, "PORT 203,0,113,1,195,80"},
		{"EPRT v4", func() ([]byte, error) { return AppendEPRT(nil, v4) }, "EPRT |1|203.0.113.1|50000|"},
		{"EPRT v6", func() ([]byte, error) { return AppendEPRT(nil, v6) }, "EPRT |2|2001:db8::1|50001|"},
		{"227", func() ([]byte, error) { return Append227(nil, v4) }, "227 Entering Passive Mode (203,0,113,1,195,80)."},
		{"229", func() ([]byte, error) { return Append229(nil, 50001) }, "229 Entering Extended Passive Mode (|||50001|)"},
	} {
		b, err := tc.got()
		if err != nil || string(b) != tc.want {
			t.Errorf("%s: %q, %v; want %q", tc.name, b, err, tc.want)
		}
	}
	for name, f := range map[string]func() ([]byte, error){
		"PORT with IPv6": func() ([]byte, error) { return AppendPORT(nil, v6) },
		"227 with IPv6":  func() ([]byte, error) { return Append227(nil, v6) },
		"PORT port 0":    func() ([]byte, error) { return AppendPORT(nil, netip.AddrPortFrom(v4.Addr(), 0)) },
		"229 port 0":     func() ([]byte, error) { return Append229(nil, 0) },
		"EPRT zoned": func() ([]byte, error) {
			return AppendEPRT(nil, netip.AddrPortFrom(netip.MustParseAddr("fe80::1%eth0"), 1))
		},
	} {
		if _, err := f(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestFormattersAllocateNothing(t *testing.T) {
	ep := netip.MustParseAddrPort("203.0.113.1:50000")
	buf := make([]byte, 0, 128)
	if n := testing.AllocsPerRun(100, func() {
		b, _ := AppendPORT(buf[:0], ep)
		b, _ = Append227(b[:0], ep)
		_, _ = Append229(b[:0], 50000)
	}); n != 0 {
		t.Errorf("%v allocations per run, want 0", n)
	}
}

// FuzzFormatRoundTrip writes endpoints with the formatters and reads them
// back with the parsers, and rewrites what the parsers accept.
func FuzzFormatRoundTrip(f *testing.F) {
	f.Add([]byte{203, 0, 113, 1}, uint16(50000), []byte("PORT 1,2,3,4,5,6"))
	f.Add([]byte{0x20, 0x01, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, uint16(1), []byte("EPRT |2|::1|7|"))
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4}, uint16(5), []byte("EPRT |2|::ffff:1.2.3.4|5|"))
	f.Fuzz(func(t *testing.T, raw []byte, port uint16, line []byte) {
		addr, ok := netip.AddrFromSlice(raw)
		if ok {
			ep := netip.AddrPortFrom(addr, port)
			if b, err := AppendEPRT(nil, ep); err == nil {
				c, perr := ParseCommand(b)
				if perr != nil || c.Verb != VerbEPRT || c.Endpoint != ep {
					t.Fatalf("EPRT %v: wrote %q, read %+v %v", ep, b, c, perr)
				}
			}
			if b, err := AppendPORT(nil, ep); err == nil {
				c, perr := ParseCommand(b)
				if perr != nil || c.Verb != VerbPORT || c.Endpoint != ep {
					t.Fatalf("PORT %v: wrote %q, read %+v %v", ep, b, c, perr)
				}
			}
			if b, err := Append227(nil, ep); err == nil {
				r := ParseReplyLine(b)
				got, perr := ParsePASVReply(r.Text)
				if r.Code != 227 || perr != nil || got != ep {
					t.Fatalf("227 %v: wrote %q, read %v %v", ep, b, got, perr)
				}
			}
		}
		if b, err := Append229(nil, port); err == nil {
			r := ParseReplyLine(b)
			got, perr := ParseEPSVReply(r.Text)
			if r.Code != 229 || perr != nil || got != port {
				t.Fatalf("229 %d: wrote %q, read %v %v", port, b, got, perr)
			}
		}
		// What the parser takes, the formatter writes back to the same.
		if c, err := ParseCommand(line); err == nil && c.Verb.IsActive() && c.Verb != VerbLPRT {
			appendFn := AppendPORT
			if c.Verb == VerbEPRT {
				appendFn = AppendEPRT
			}
			b, ferr := appendFn(nil, c.Endpoint)
			if ferr != nil {
				t.Fatalf("%q parsed to %v, which %s cannot write: %v", line, c.Endpoint, c.Verb, ferr)
			}
			again, perr := ParseCommand(b)
			if perr != nil || again.Endpoint != c.Endpoint {
				t.Fatalf("%q: rewrote %q, read %v %v", line, b, again.Endpoint, perr)
			}
		}
	})
}

func TestAppendRewritten(t *testing.T) {
	v4 := netip.MustParseAddrPort("203.0.113.1:50000")
	v6 := netip.MustParseAddrPort("[2001:db8::1]:50001")
	for _, tc := range []struct {
		verb Verb
		to   netip.AddrPort
		want string
	}{
		{VerbPASV, v4, "227 Entering Passive Mode (203,0,113,1,195,80).\r\n"},
		{VerbEPSV, v6, "229 Entering Extended Passive Mode (|||50001|)\r\n"},
		{VerbPORT, v4, "PORT 203,0,113,1,195,80\r\n"},
		{VerbEPRT, v6, "EPRT |2|2001:db8::1|50001|\r\n"},
	} {
		if b, err := AppendRewritten(nil, tc.verb, tc.to); err != nil || string(b) != tc.want {
			t.Errorf("%s to %s: %q, %v; want %q", tc.verb, tc.to, b, err, tc.want)
		}
	}
	for _, tc := range []struct {
		verb Verb
		to   netip.AddrPort
	}{{VerbLPRT, v4}, {VerbLPSV, v4}, {VerbOther, v4}, {VerbAUTH, v4}, {VerbPASV, v6}, {VerbPORT, v6}} {
		if b, err := AppendRewritten(nil, tc.verb, tc.to); err == nil {
			t.Errorf("%s to %s rewritten: %q", tc.verb, tc.to, b)
		}
	}
}

func TestReplyVerb(t *testing.T) {
	for code, want := range map[int]Verb{227: VerbPASV, 228: VerbLPSV, 229: VerbEPSV, 234: VerbAUTH, 200: VerbOther, 230: VerbOther} {
		if got := ReplyVerb(code); got != want {
			t.Errorf("ReplyVerb(%d) = %s, want %s", code, got, want)
		}
	}
}
