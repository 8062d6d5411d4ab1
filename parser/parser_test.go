package parser

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParseCommand(t *testing.T) {
	ap := netip.MustParseAddrPort
	tests := []struct {
		line    string
		want    Command
		wantErr bool
	}{
		{line: "PORT 192,0,2,10,4,1", want: Command{Verb: VerbPORT, Endpoint: ap("192.0.2.10:1025")}},
		{line: "port 192,0,2,10,4,1\r", want: Command{Verb: VerbPORT, Endpoint: ap("192.0.2.10:1025")}},
		{line: "Port   192,0,2,10,255,255  ", want: Command{Verb: VerbPORT, Endpoint: ap("192.0.2.10:65535")}},
		{line: "PORT 0,0,0,0,0,1", want: Command{Verb: VerbPORT, Endpoint: ap("0.0.0.0:1")}},
		{line: "PORT 192,0,2,256,4,1", want: Command{Verb: VerbPORT}, wantErr: true},
		{line: "PORT 192,0,2,10,4", want: Command{Verb: VerbPORT}, wantErr: true},
		{line: "PORT 192,0,2,10,4,1,7", want: Command{Verb: VerbPORT}, wantErr: true},
		{line: "PORT 192,0,2,10,0,0", want: Command{Verb: VerbPORT}, wantErr: true},
		{line: "PORT 0192,0,2,10,4,1", want: Command{Verb: VerbPORT}, wantErr: true},
		{line: "PORT " + strings.Repeat("9", 64) + ",0,2,10,4,1", want: Command{Verb: VerbPORT}, wantErr: true},
		{line: "PORT 4294967488,0,2,10,4,1", want: Command{Verb: VerbPORT}, wantErr: true},
		{line: "PORT -1,0,2,10,4,1", want: Command{Verb: VerbPORT}, wantErr: true},
		{line: "PORT 192, 0,2,10,4,1", want: Command{Verb: VerbPORT}, wantErr: true},
		{line: "PORT", want: Command{Verb: VerbPORT}, wantErr: true},
		{line: "EPRT |1|192.0.2.10|6275|", want: Command{Verb: VerbEPRT, Endpoint: ap("192.0.2.10:6275")}},
		{line: "eprt |2|2001:db8::1|5282|", want: Command{Verb: VerbEPRT, Endpoint: ap("[2001:db8::1]:5282")}},
		{line: "EPRT !2!2001:db8::1!5282!", want: Command{Verb: VerbEPRT, Endpoint: ap("[2001:db8::1]:5282")}},
		{line: "EPRT ~1~198.51.100.7~65535~", want: Command{Verb: VerbEPRT, Endpoint: ap("198.51.100.7:65535")}},
		{line: "EPRT |1|192.0.2.10|65536|", want: Command{Verb: VerbEPRT}, wantErr: true},
		{line: "EPRT |1|192.0.2.10|0|", want: Command{Verb: VerbEPRT}, wantErr: true},
		{line: "EPRT |1|2001:db8::1|6275|", want: Command{Verb: VerbEPRT}, wantErr: true},
		{line: "EPRT |2|192.0.2.10|6275|", want: Command{Verb: VerbEPRT}, wantErr: true},
		{line: "EPRT |3|192.0.2.10|6275|", want: Command{Verb: VerbEPRT}, wantErr: true},
		{line: "EPRT |2|fe80::1%eth0|6275|", want: Command{Verb: VerbEPRT}, wantErr: true},
		{line: "EPRT |1|192.0.2.10|6275", want: Command{Verb: VerbEPRT}, wantErr: true},
		{line: "EPRT |1|192.0.2.10|6275|x", want: Command{Verb: VerbEPRT}, wantErr: true},
		{line: "EPRT |1|192.0.2.10|+6275|", want: Command{Verb: VerbEPRT}, wantErr: true},
		{line: "EPRT \x7f1\x7f192.0.2.10\x7f6275\x7f", want: Command{Verb: VerbEPRT}, wantErr: true},
		{line: "EPRT  1 192.0.2.10 6275 ", want: Command{Verb: VerbEPRT}, wantErr: true},
		{line: "LPRT 4,4,192,0,2,10,2,4,1", want: Command{Verb: VerbLPRT, Endpoint: ap("192.0.2.10:1025")}},
		{line: "LPRT 6,16,32,1,13,184,0,0,0,0,0,0,0,0,0,0,0,1,2,19,136", want: Command{Verb: VerbLPRT, Endpoint: ap("[2001:db8::1]:5000")}},
		{line: "LPRT 4,16,192,0,2,10,2,4,1", want: Command{Verb: VerbLPRT}, wantErr: true},
		{line: "LPRT 4,4,192,0,2,10,3,4,1,1", want: Command{Verb: VerbLPRT}, wantErr: true},
		{line: "LPRT 4,4,192,0,2,10,2,4", want: Command{Verb: VerbLPRT}, wantErr: true},
		{line: "PASV", want: Command{Verb: VerbPASV}},
		{line: "pasv\r", want: Command{Verb: VerbPASV}},
		{line: "LPSV", want: Command{Verb: VerbLPSV}},
		{line: "EPSV", want: Command{Verb: VerbEPSV}},
		{line: "EPSV 2", want: Command{Verb: VerbEPSV}},
		{line: "EPSV all", want: Command{Verb: VerbEPSV, All: true}},
		{line: "EPSV 7", want: Command{Verb: VerbEPSV}, wantErr: true},
		{line: "AUTH tls", want: Command{Verb: VerbAUTH, Mechanism: "TLS"}},
		{line: "CCC", want: Command{Verb: VerbCCC}},
		{line: "QUIT", want: Command{Verb: VerbQUIT}},
		{line: "RETR file", want: Command{Verb: VerbOther}},
		{line: "PORTX 1,2,3,4,5,6", want: Command{Verb: VerbOther}},
		{line: "", want: Command{Verb: VerbOther}},
		{line: "\xff\xf4\xff\xf2ABOR", want: Command{Verb: VerbOther}},
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			got, err := ParseCommand([]byte(tt.line))
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseCommand(%q) error = %v, wantErr %v", tt.line, err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrSyntax) {
				t.Errorf("error %v does not match ErrSyntax", err)
			}
			if got != tt.want {
				t.Errorf("ParseCommand(%q) = %+v, want %+v", tt.line, got, tt.want)
			}
		})
	}
}

func TestParseReplyLine(t *testing.T) {
	tests := []struct {
		line string
		want ReplyLine
	}{
		{"227 Entering Passive Mode (192,0,2,1,4,1)", ReplyLine{Code: 227, Text: []byte("Entering Passive Mode (192,0,2,1,4,1)")}},
		{"227-first line", ReplyLine{Code: 227, More: true, Text: []byte("first line")}},
		{"200", ReplyLine{Code: 200}},
		{" 227 indented", ReplyLine{Text: []byte(" 227 indented")}},
		{"2270 no", ReplyLine{Text: []byte("2270 no")}},
		{"627 bad class", ReplyLine{Text: []byte("627 bad class")}},
		{"", ReplyLine{}},
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			got := ParseReplyLine([]byte(tt.line))
			if got.Code != tt.want.Code || got.More != tt.want.More || string(got.Text) != string(tt.want.Text) {
				t.Errorf("ParseReplyLine(%q) = %+v, want %+v", tt.line, got, tt.want)
			}
		})
	}
}

func TestParsePASVReply(t *testing.T) {
	ap := netip.MustParseAddrPort
	tests := []struct {
		text    string
		want    netip.AddrPort
		wantErr bool
	}{
		{text: "Entering Passive Mode (192,0,2,1,4,1)", want: ap("192.0.2.1:1025")},
		{text: "Entering Passive Mode (192,0,2,1,4,1).", want: ap("192.0.2.1:1025")},
		{text: "entering passive mode 192,0,2,1,4,1", want: ap("192.0.2.1:1025")},
		{text: "=192,0,2,1,200,10 and then some text 1,2,3", want: ap("192.0.2.1:51210")},
		{text: "(192,0,2,1,4,1", want: ap("192.0.2.1:1025")},
		{text: "Entering Passive Mode", wantErr: true},
		{text: "Entering Passive Mode (192,0,2,1,4)", wantErr: true},
		{text: "Entering Passive Mode (192,0,2,1000,4,1)", wantErr: true},
		{text: "Entering Passive Mode (192,0,2,1,0,0)", wantErr: true},
		{text: "Entering Passive Mode (" + strings.Repeat("1", 64) + ",0,2,1,4,1)", wantErr: true},
		{text: strings.Repeat("A", 100000), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.text[:min(len(tt.text), 60)], func(t *testing.T) {
			got, err := ParsePASVReply([]byte(tt.text))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("ParsePASVReply(%q) = %v, %v; want %v, err %v", tt.text, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestParseEPSVReply(t *testing.T) {
	tests := []struct {
		text    string
		want    uint16
		wantErr bool
	}{
		{text: "Entering Extended Passive Mode (|||6446|)", want: 6446},
		{text: "Entering Extended Passive Mode (!!!6446!)", want: 6446},
		{text: "EPSV ok (|||65535|) trailing", want: 65535},
		{text: "Entering Extended Passive Mode (|||65536|)", wantErr: true},
		{text: "Entering Extended Passive Mode (|||0|)", wantErr: true},
		{text: "Entering Extended Passive Mode (||6446|)", wantErr: true},
		{text: "Entering Extended Passive Mode (|1|192.0.2.1|6446|)", wantErr: true},
		{text: "Entering Extended Passive Mode (|||6446)", wantErr: true},
		{text: "Entering Extended Passive Mode (|||64a6|)", wantErr: true},
		{text: "Entering Extended Passive Mode (   6446 )", wantErr: true},
		{text: "(", wantErr: true},
		{text: "(|||", wantErr: true},
		{text: "no port", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.text, func(t *testing.T) {
			got, err := ParseEPSVReply([]byte(tt.text))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("ParseEPSVReply(%q) = %v, %v; want %v, err %v", tt.text, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestParseLPSVReply(t *testing.T) {
	got, err := ParseLPSVReply([]byte("Entering Long Passive Mode (4,4,192,0,2,1,2,4,1)"))
	if err != nil || got != netip.MustParseAddrPort("192.0.2.1:1025") {
		t.Errorf("ParseLPSVReply = %v, %v", got, err)
	}
	got, err = ParseLPSVReply([]byte("Entering Long Passive Mode (6,16,32,1,13,184,0,0,0,0,0,0,0,0,0,0,0,1,2,19,136)"))
	if err != nil || got != netip.MustParseAddrPort("[2001:db8::1]:5000") {
		t.Errorf("ParseLPSVReply v6 = %v, %v", got, err)
	}
	for _, bad := range []string{"no numbers", "(4,4,192,0,2,1,3,4,1)", "(5,4,192,0,2,1,2,4,1)", "(4,4,192,0,2)"} {
		if _, err := ParseLPSVReply([]byte(bad)); err == nil {
			t.Errorf("ParseLPSVReply(%q) succeeded, want error", bad)
		}
	}
}
