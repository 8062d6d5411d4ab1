package parser

import (
	"errors"
	"net/netip"
	"strconv"
)

// The formatters write announcements from typed values, as a NAT helper
// rewrites them: the inverse of the parsers, byte for byte what RFC 959
// and RFC 2428 ask, without a line terminator. Each appends to dst and
// allocates nothing when dst has room.

// ErrNotFormattable is returned for an endpoint a line cannot carry: a
// zero port, an IPv6 address in a PORT or 227, a zoned address.
var ErrNotFormattable = errors.New("endpoint cannot be written in that form")

// AppendPORT appends "PORT h1,h2,h3,h4,p1,p2" (RFC 959).
func AppendPORT(dst []byte, ep netip.AddrPort) ([]byte, error) {
	if !ep.Addr().Is4() || ep.Port() == 0 {
		return dst, ErrNotFormattable
	}
	return appendHostPort(append(dst, "PORT "...), ep), nil
}

// AppendEPRT appends "EPRT |1|a.b.c.d|port|" or "EPRT |2|addr|port|"
// (RFC 2428).
func AppendEPRT(dst []byte, ep netip.AddrPort) ([]byte, error) {
	a := ep.Addr()
	if !a.IsValid() || a.Zone() != "" || ep.Port() == 0 {
		return dst, ErrNotFormattable
	}
	dst = append(dst, "EPRT |"...)
	if a.Is4() {
		dst = append(dst, '1')
	} else {
		dst = append(dst, '2')
	}
	dst = append(dst, '|')
	dst = a.AppendTo(dst)
	dst = append(dst, '|')
	dst = strconv.AppendUint(dst, uint64(ep.Port()), 10)
	return append(dst, '|'), nil
}

// Append227 appends "227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)."
// (RFC 959; the text before the numbers is free, and this is vsftpd's).
func Append227(dst []byte, ep netip.AddrPort) ([]byte, error) {
	if !ep.Addr().Is4() || ep.Port() == 0 {
		return dst, ErrNotFormattable
	}
	dst = appendHostPort(append(dst, "227 Entering Passive Mode ("...), ep)
	return append(dst, ")."...), nil
}

// Append229 appends "229 Entering Extended Passive Mode (|||port|)"
// (RFC 2428).
func Append229(dst []byte, port uint16) ([]byte, error) {
	if port == 0 {
		return dst, ErrNotFormattable
	}
	dst = append(dst, "229 Entering Extended Passive Mode (|||"...)
	dst = strconv.AppendUint(dst, uint64(port), 10)
	return append(dst, "|)"...), nil
}

// appendHostPort appends the six numbers of an IPv4 endpoint.
func appendHostPort(dst []byte, ep netip.AddrPort) []byte {
	a := ep.Addr().As4()
	for _, b := range a {
		dst = strconv.AppendUint(dst, uint64(b), 10)
		dst = append(dst, ',')
	}
	dst = strconv.AppendUint(dst, uint64(ep.Port()>>8), 10)
	dst = append(dst, ',')
	return strconv.AppendUint(dst, uint64(ep.Port()&0xff), 10)
}
