package parser

import (
	"fmt"
	"net/netip"
)

// ReplyVerb names the command that a reply code answers when only one
// command asks for that code: a 227 answers a PASV (or nothing), a 228 an
// LPSV, a 229 an EPSV, a 234 an AUTH. Any other code: VerbOther.
func ReplyVerb(code int) Verb {
	switch code {
	case 227:
		return VerbPASV
	case 228:
		return VerbLPSV
	case 229:
		return VerbEPSV
	case 234:
		return VerbAUTH
	}
	return VerbOther
}

// AppendRewritten appends, with CR LF, the line a NAT gateway sends in
// place of the announcement of verb, pointed at to: for PORT and EPRT
// the command itself, for PASV and EPSV their reply (a 227, a 229, which
// carries only the port). These are the only lines ftpgate rewrites; an
// LPRT or an LPSV's 228 cannot be, and neither can an endpoint the
// line's form cannot carry (ErrNotFormattable).
func AppendRewritten(dst []byte, verb Verb, to netip.AddrPort) ([]byte, error) {
	var err error
	switch verb {
	case VerbPASV:
		dst, err = Append227(dst, to)
	case VerbEPSV:
		dst, err = Append229(dst, to.Port())
	case VerbPORT:
		dst, err = AppendPORT(dst, to)
	case VerbEPRT:
		dst, err = AppendEPRT(dst, to)
	default:
		return dst, fmt.Errorf("%s cannot be rewritten", verb)
	}
	if err != nil {
		return dst, err
	}
	return append(dst, '\r', '\n'), nil
}
