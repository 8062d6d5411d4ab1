package rules

import (
	"fmt"
	"net/netip"
)

// Pinhole admits exactly one TCP data connection from Peer to Addr:Port,
// with any source port. It is consumed by the first packet of that
// connection.
type Pinhole struct {
	Peer netip.Addr // the host that will open the data connection
	Addr netip.Addr // the announced address it will connect to
	Port uint16     // the announced port
}

func (p Pinhole) String() string {
	return fmt.Sprintf("%s -> %s", p.Peer, netip.AddrPortFrom(p.Addr, p.Port))
}

// Valid reports whether both addresses are of one family and the port is set.
func (p Pinhole) Valid() bool {
	return p.Peer.IsValid() && p.Addr.IsValid() && p.Port != 0 &&
		p.Peer.Is4() == p.Addr.Is4() && p.Peer.Zone() == "" && p.Addr.Zone() == ""
}

// Peers are the two hosts of an FTP control session. While they have a
// session, a new TCP connection between them that finds no pinhole is
// held for the daemon (see AddInlineRules) rather than passed on to the
// admin's rules, which would drop it: its announcement may still be on
// the way through the daemon.
type Peers struct {
	Client netip.Addr
	Server netip.Addr
}

func (p Peers) String() string { return fmt.Sprintf("%s <-> %s", p.Client, p.Server) }

// Valid reports whether both addresses are set and of one family.
func (p Peers) Valid() bool {
	return p.Client.IsValid() && p.Server.IsValid() && p.Client.Is4() == p.Server.Is4() &&
		p.Client.Zone() == "" && p.Server.Zone() == ""
}
