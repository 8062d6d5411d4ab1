package conntrack

import (
	"fmt"
	"net/netip"
	"slices"
)

// Policy holds the checks every announcement must pass before a pinhole
// opens. Whether the server accepted a PORT, or a reply answers a PASV
// the client sent, is settled by the session before the policy is asked.
type Policy struct {
	// MinDataPort refuses announced ports below it (default 1024): a
	// pinhole to a privileged port is how bounce attacks reach services.
	MinDataPort uint16
}

// Check returns "" when the announcement may open a pinhole, else the
// kind of refusal and the reason. announcer is the control-connection address of
// the side that wrote the announcement; through NAT, its addresses on
// both sides of the translation. Requiring the announced address to be
// the announcer's also settles its family: the connecting peer is the
// other end of that same control connection.
func (p Policy) Check(ch Channel, announcer ...netip.Addr) (RefusalKind, string) {
	if !slices.Contains(announcer, ch.RespH) {
		side := "client"
		if ch.Passive {
			side = "server"
		}
		if len(announcer) > 1 && announcer[0] != announcer[1] {
			return refusedNotAnnouncer, fmt.Sprintf("announced address %s is the %s's address on neither side of the NAT (%s, %s)",
				ch.RespH, side, announcer[0], announcer[1])
		}
		reason := fmt.Sprintf("announced address %s is not the %s's control address %s", ch.RespH, side, announcer[0])
		if sameNetwork(ch.RespH, announcer[0]) {
			// A NAT's inside and outside addresses are on different
			// networks: a neighbour of the announcer is the target of a
			// bounce.
			reason += ": it names another host on the same network (an FTP bounce)"
		} else if natSuspected(ch.RespH, announcer[0]) {
			// The commonest cause by far: a host behind NAT writes its own
			// address, which the far side cannot reach. (A bounce attack
			// looks the same on the wire; either way it stays closed.)
			reason = "NAT suspected: " + reason
		}
		return refusedNotAnnouncer, reason
	}
	if ch.RespP < p.MinDataPort {
		return refusedLowPort, fmt.Sprintf("announced port %d is below the minimum data port %d", ch.RespP, p.MinDataPort)
	}
	return 0, ""
}

// sameNetwork reports whether two addresses share a /24 (IPv4) or a /64
// (IPv6).
func sameNetwork(a, b netip.Addr) bool {
	if a.Is4() != b.Is4() || !a.IsValid() || !b.IsValid() {
		return false
	}
	bits := 64
	if a.Is4() {
		bits = 24
	}
	pa, _ := a.Prefix(bits)
	return pa.Contains(b)
}

// natSuspected reports whether an announced address that differs from
// the announcer's control address looks like that host's own address
// behind a NAT: a unicast address of the same family, not the
// unspecified or a loopback address.
func natSuspected(announced, control netip.Addr) bool {
	return announced.Is4() == control.Is4() && announced.IsValid() && !announced.IsUnspecified() &&
		!announced.IsLoopback() && !announced.IsMulticast() && !announced.IsLinkLocalUnicast()
}
