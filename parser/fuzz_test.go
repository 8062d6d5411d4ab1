package parser

import (
	"bytes"
	"testing"
)

var commandSeeds = []string{
	"PORT 192,0,2,10,4,1", "EPRT |1|192.0.2.10|6275|", "EPRT |2|2001:db8::1|5282|",
	"LPRT 4,4,192,0,2,10,2,4,1", "LPRT 6,16,32,1,13,184,0,0,0,0,0,0,0,0,0,0,0,1,2,19,136",
	"PASV", "EPSV ALL", "EPSV 2", "AUTH TLS", "CCC", "QUIT", "PORT 2,2,2,3,0,80",
	"PORT 99999999999999999999999999999999999999999999999999999999999999,0,0,0,0,1",
}

var replySeeds = []string{
	"227 Entering Passive Mode (192,0,2,1,4,1).", "227 entering passive mode 192,0,2,1,4,1",
	"229 Entering Extended Passive Mode (|||6446|)", "228 Entering Long Passive Mode (4,4,192,0,2,1,2,4,1)",
	"227-multi", "200 PORT command successful", "234 Proceed with negotiation.",
}

// FuzzParseCommand checks that no client line panics and that every
// accepted endpoint is within the stated bounds.
func FuzzParseCommand(f *testing.F) {
	for _, s := range commandSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		c, err := ParseCommand(line)
		if err == nil && c.Verb.IsActive() {
			if !c.Endpoint.IsValid() || c.Endpoint.Port() == 0 {
				t.Fatalf("ParseCommand(%q) accepted invalid endpoint %v", line, c.Endpoint)
			}
		}
	})
}

// FuzzParseReply checks every reply parser on every server line.
func FuzzParseReply(f *testing.F) {
	for _, s := range replySeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		r := ParseReplyLine(line)
		if r.Code != 0 && (r.Code < 100 || r.Code > 599) {
			t.Fatalf("code %d out of range", r.Code)
		}
		if !bytes.Contains(line, r.Text) {
			t.Fatalf("text %q is not part of line %q", r.Text, line)
		}
		if ap, err := ParsePASVReply(r.Text); err == nil && (!ap.Addr().Is4() || ap.Port() == 0) {
			t.Fatalf("227 accepted %v", ap)
		}
		if ap, err := ParseLPSVReply(r.Text); err == nil && (!ap.IsValid() || ap.Port() == 0) {
			t.Fatalf("228 accepted %v", ap)
		}
		if p, err := ParseEPSVReply(r.Text); err == nil && p == 0 {
			t.Fatalf("229 accepted port 0")
		}
	})
}
