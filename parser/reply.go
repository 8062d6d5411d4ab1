package parser

import (
	"bytes"
	"net/netip"
)

// ReplyLine is one line of a server reply (RFC 959 section 4.2).
type ReplyLine struct {
	// Code is the three-digit reply code, or 0 for a line inside a
	// multi-line reply that does not start with one.
	Code int
	// More is set for "ddd-text": the first (or an inner) line of a
	// multi-line reply. A line "ddd text" ends the reply with code ddd.
	More bool
	// Text is what follows the code and its separator.
	Text []byte
}

// ParseReplyLine splits a server line into code, continuation mark and
// text. It never fails: a line without a code is an inner line of a
// multi-line reply.
func ParseReplyLine(line []byte) ReplyLine {
	if len(line) < 3 || line[0] < '1' || line[0] > '5' || !isDigit(line[1]) || !isDigit(line[2]) {
		return ReplyLine{Text: line}
	}
	code := int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0')
	switch {
	case len(line) == 3:
		return ReplyLine{Code: code}
	case line[3] == ' ':
		return ReplyLine{Code: code, Text: line[4:]}
	case line[3] == '-':
		return ReplyLine{Code: code, More: true, Text: line[4:]}
	}
	return ReplyLine{Text: line}
}

// ParsePASVReply finds the host-port in the text of a 227 reply. As RFC
// 1123 section 4.1.2.6 asks, it scans for the first digit rather than
// trusting parentheses, and it accepts any text after the six numbers.
func ParsePASVReply(text []byte) (netip.AddrPort, error) {
	i := indexDigit(text)
	if i < 0 {
		return netip.AddrPort{}, syntaxErr("227 reply", "no host-port")
	}
	var n [6]byte
	if _, err := parseByteList(text[i:], n[:], "227 reply"); err != nil {
		return netip.AddrPort{}, err
	}
	return hostPort(n, "227 reply")
}

// ParseLPSVReply finds the long host-port in the text of a 228 reply.
func ParseLPSVReply(text []byte) (netip.AddrPort, error) {
	i := indexDigit(text)
	if i < 0 {
		return netip.AddrPort{}, syntaxErr("228 reply", "no long host-port")
	}
	return parseLongAddr(text[i:], "228 reply")
}

// ParseEPSVReply finds "(<d><d><d>port<d>)" in the text of a 229 reply
// (RFC 2428 section 3) and returns the port. The address is, by
// definition, the one the control connection goes to.
func ParseEPSVReply(text []byte) (uint16, error) {
	i := bytes.IndexByte(text, '(')
	if i < 0 || len(text) < i+6 {
		return 0, syntaxErr("229 reply", "no (|||port|)")
	}
	b := text[i+1:]
	d := b[0]
	if d < 33 || d > 126 || b[1] != d || b[2] != d {
		return 0, syntaxErr("229 reply", "want three equal delimiters before the port")
	}
	b = b[3:]
	end := bytes.IndexByte(b, d)
	if end < 0 || end+1 >= len(b) || b[end+1] != ')' {
		return 0, syntaxErr("229 reply", "port not closed by delimiter and ')'")
	}
	return parsePort(b[:end], "229 reply")
}

func indexDigit(b []byte) int {
	for i, c := range b {
		if isDigit(c) {
			return i
		}
	}
	return -1
}
