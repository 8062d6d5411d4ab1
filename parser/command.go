// Package parser turns single FTP control-channel lines into typed values.
//
// It is pure: no I/O, no state, no allocation beyond what a result needs.
// Lines are handed over without their line terminator. Every byte is
// untrusted, so every number is bounded before it is used: address bytes
// must be 0–255 written in at most three digits, ports 1–65535 in at most
// five digits; anything else is a *SyntaxError.
package parser

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
)

// Verb is a client command that matters for data channels or for the
// session's ability to be parsed at all.
type Verb uint8

const (
	VerbOther Verb = iota // any command ftpgate does not act on
	VerbPORT              // RFC 959
	VerbEPRT              // RFC 2428
	VerbLPRT              // RFC 1639
	VerbPASV              // RFC 959
	VerbEPSV              // RFC 2428 (also "EPSV ALL")
	VerbLPSV              // RFC 1639
	VerbAUTH              // RFC 2228 / RFC 4217
	VerbCCC               // RFC 2228: clear command channel
	VerbQUIT              // RFC 959
)

var verbNames = [...]string{"OTHER", "PORT", "EPRT", "LPRT", "PASV", "EPSV", "LPSV", "AUTH", "CCC", "QUIT"}

func (v Verb) String() string {
	if int(v) < len(verbNames) {
		return verbNames[v]
	}
	return fmt.Sprintf("Verb(%d)", uint8(v))
}

// IsActive reports whether the verb announces an address the server is to
// connect to (active mode).
func (v Verb) IsActive() bool { return v == VerbPORT || v == VerbEPRT || v == VerbLPRT }

// IsPassive reports whether the verb asks the server to announce an address
// the client is to connect to (passive mode).
func (v Verb) IsPassive() bool { return v == VerbPASV || v == VerbEPSV || v == VerbLPSV }

// IsData reports whether the verb negotiates a data connection.
func (v Verb) IsData() bool { return v.IsActive() || v.IsPassive() }

// Command is one parsed client command.
type Command struct {
	Verb Verb
	// Endpoint is the address and port announced by PORT, EPRT and LPRT.
	Endpoint netip.AddrPort
	// All is set for "EPSV ALL": the client promises to use EPSV only.
	All bool
	// Mechanism is the upper-cased argument of AUTH (e.g. "TLS").
	Mechanism string
}

// SyntaxError describes a command or reply whose form is wrong.
type SyntaxError struct {
	What   string // e.g. "PORT", "227 reply"
	Reason string
}

func (e *SyntaxError) Error() string { return "malformed " + e.What + ": " + e.Reason }

// ErrSyntax matches every *SyntaxError with errors.Is.
var ErrSyntax = errors.New("malformed FTP line")

// Is lets errors.Is(err, ErrSyntax) match.
func (e *SyntaxError) Is(target error) bool { return target == ErrSyntax }

func syntaxErr(what, reason string) error { return &SyntaxError{What: what, Reason: reason} }

// ParseCommand parses one client line. Unknown commands give VerbOther and
// no error; a known data command with a malformed argument gives an error.
func ParseCommand(line []byte) (Command, error) {
	line = trimSpace(line)
	verb, arg := line, []byte(nil)
	if i := bytes.IndexByte(line, ' '); i >= 0 {
		verb, arg = line[:i], trimSpace(line[i+1:])
	}
	if len(verb) < 3 || len(verb) > 4 {
		return Command{Verb: VerbOther}, nil
	}
	var v [4]byte
	for i, c := range verb {
		v[i] = upper(c)
	}
	switch string(v[:len(verb)]) {
	case "PORT":
		ap, err := parsePORT(arg)
		return Command{Verb: VerbPORT, Endpoint: ap}, err
	case "EPRT":
		ap, err := parseEPRT(arg)
		return Command{Verb: VerbEPRT, Endpoint: ap}, err
	case "LPRT":
		ap, err := parseLongAddr(arg, "LPRT")
		return Command{Verb: VerbLPRT, Endpoint: ap}, err
	case "PASV":
		return Command{Verb: VerbPASV}, nil
	case "LPSV":
		return Command{Verb: VerbLPSV}, nil
	case "EPSV":
		c := Command{Verb: VerbEPSV}
		switch {
		case len(arg) == 0, string(arg) == "1", string(arg) == "2":
		case len(arg) == 3 && upper(arg[0]) == 'A' && upper(arg[1]) == 'L' && upper(arg[2]) == 'L':
			c.All = true
		default:
			return c, syntaxErr("EPSV", "argument must be empty, 1, 2 or ALL")
		}
		return c, nil
	case "AUTH":
		m := make([]byte, len(arg))
		for i, c := range arg {
			m[i] = upper(c)
		}
		return Command{Verb: VerbAUTH, Mechanism: string(m)}, nil
	case "CCC":
		return Command{Verb: VerbCCC}, nil
	case "QUIT":
		return Command{Verb: VerbQUIT}, nil
	}
	return Command{Verb: VerbOther}, nil
}

// parsePORT parses "h1,h2,h3,h4,p1,p2" exactly (RFC 959 host-port).
func parsePORT(arg []byte) (netip.AddrPort, error) {
	var n [6]byte
	rest, err := parseByteList(arg, n[:], "PORT")
	if err != nil {
		return netip.AddrPort{}, err
	}
	if len(trimSpace(rest)) != 0 {
		return netip.AddrPort{}, syntaxErr("PORT", "trailing bytes after port")
	}
	return hostPort(n, "PORT")
}

// hostPort builds an IPv4 endpoint from the six numbers of PORT or 227.
func hostPort(n [6]byte, what string) (netip.AddrPort, error) {
	port := uint16(n[4])<<8 | uint16(n[5])
	if port == 0 {
		return netip.AddrPort{}, syntaxErr(what, "port 0")
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{n[0], n[1], n[2], n[3]}), port), nil
}

// parseByteList reads len(dst) comma-separated decimal bytes from the start
// of b and returns what follows the last one.
func parseByteList(b []byte, dst []byte, what string) ([]byte, error) {
	for i := range dst {
		if i > 0 {
			if len(b) == 0 || b[0] != ',' {
				return nil, syntaxErr(what, fmt.Sprintf("want %d comma-separated numbers", len(dst)))
			}
			b = b[1:]
		}
		v, n, err := parseDecimal(b, 3, 255, what)
		if err != nil {
			return nil, err
		}
		dst[i] = byte(v)
		b = b[n:]
	}
	return b, nil
}

// parseDecimal reads at most maxDigits digits from the start of b and
// checks the value against max. It never overflows: the digit count is
// bounded before any arithmetic.
func parseDecimal(b []byte, maxDigits int, max uint32, what string) (uint32, int, error) {
	n := 0
	var v uint32
	for n < len(b) && isDigit(b[n]) {
		if n == maxDigits {
			return 0, 0, syntaxErr(what, fmt.Sprintf("number longer than %d digits", maxDigits))
		}
		v = v*10 + uint32(b[n]-'0')
		n++
	}
	if n == 0 {
		return 0, 0, syntaxErr(what, "number expected")
	}
	if v > max {
		return 0, 0, syntaxErr(what, fmt.Sprintf("number %d above %d", v, max))
	}
	return v, n, nil
}

// parsePort parses a whole field as a TCP port 1–65535.
func parsePort(b []byte, what string) (uint16, error) {
	v, n, err := parseDecimal(b, 5, 65535, what)
	if err != nil {
		return 0, err
	}
	if n != len(b) {
		return 0, syntaxErr(what, "port is not a decimal number")
	}
	if v == 0 {
		return 0, syntaxErr(what, "port 0")
	}
	return uint16(v), nil
}

// parseEPRT parses "<d>net-prt<d>net-addr<d>tcp-port<d>" (RFC 2428), where
// d is any printable ASCII character 33–126.
func parseEPRT(arg []byte) (netip.AddrPort, error) {
	if len(arg) < 1 || arg[0] < 33 || arg[0] > 126 {
		return netip.AddrPort{}, syntaxErr("EPRT", "delimiter must be ASCII 33-126")
	}
	d := arg[0]
	fields := bytes.Split(arg[1:], []byte{d})
	// "|1|addr|port|" splits into ["1" "addr" "port" ""].
	if len(fields) != 4 || len(fields[3]) != 0 {
		return netip.AddrPort{}, syntaxErr("EPRT", "want <d>proto<d>addr<d>port<d>")
	}
	addr, err := parseNetAddr(fields[0], fields[1], "EPRT")
	if err != nil {
		return netip.AddrPort{}, err
	}
	port, err := parsePort(fields[2], "EPRT")
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(addr, port), nil
}

// parseNetAddr parses an RFC 2428 net-prt and net-addr pair.
func parseNetAddr(prt, addr []byte, what string) (netip.Addr, error) {
	var want int
	switch string(prt) {
	case "1":
		want = 4
	case "2":
		want = 6
	default:
		return netip.Addr{}, syntaxErr(what, "network protocol must be 1 (IPv4) or 2 (IPv6)")
	}
	if len(addr) > 45 { // longest IPv6 text form with an embedded IPv4 address
		return netip.Addr{}, syntaxErr(what, "address too long")
	}
	a, err := netip.ParseAddr(string(addr))
	if err != nil {
		return netip.Addr{}, syntaxErr(what, "bad address")
	}
	if a.Zone() != "" {
		return netip.Addr{}, syntaxErr(what, "address has a zone")
	}
	if (want == 4) != a.Is4() {
		return netip.Addr{}, syntaxErr(what, "address family does not match network protocol")
	}
	return a, nil
}

// parseLongAddr parses the RFC 1639 long host-port used by LPRT and 228:
// "af,hal,h1,…,hn,pal,p1,p2" with af 4 (hal 4) or 6 (hal 16) and pal 2.
func parseLongAddr(b []byte, what string) (netip.AddrPort, error) {
	var head [2]byte
	rest, err := parseByteList(b, head[:], what)
	if err != nil {
		return netip.AddrPort{}, err
	}
	af, hal := head[0], head[1]
	if !(af == 4 && hal == 4) && !(af == 6 && hal == 16) {
		return netip.AddrPort{}, syntaxErr(what, "address family must be 4 (length 4) or 6 (length 16)")
	}
	var buf [16 + 3]byte
	fields := buf[:int(hal)+3]
	if len(rest) == 0 || rest[0] != ',' {
		return netip.AddrPort{}, syntaxErr(what, "address expected")
	}
	rest, err = parseByteList(rest[1:], fields, what)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if fields[hal] != 2 {
		return netip.AddrPort{}, syntaxErr(what, "port length must be 2")
	}
	if what == "LPRT" && len(trimSpace(rest)) != 0 {
		return netip.AddrPort{}, syntaxErr(what, "trailing bytes after port")
	}
	port := uint16(fields[hal+1])<<8 | uint16(fields[hal+2])
	if port == 0 {
		return netip.AddrPort{}, syntaxErr(what, "port 0")
	}
	var addr netip.Addr
	if af == 4 {
		addr = netip.AddrFrom4([4]byte(fields[:4]))
	} else {
		addr = netip.AddrFrom16([16]byte(fields[:16]))
	}
	return netip.AddrPortFrom(addr, port), nil
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func upper(c byte) byte {
	if c >= 'a' && c <= 'z' {
		return c - 'a' + 'A'
	}
	return c
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}
