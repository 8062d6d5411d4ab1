package rules

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Mapping translates the first packet of one data connection through a
// NAT gateway, and with it the whole connection (conntrack keeps the
// binding). A DNAT mapping sends a connection from Peer to Addr:Port on
// to ToAddr:ToPort; an SNAT mapping makes a connection from Peer to
// Addr:Port leave with the source address ToAddr.
//
// A mapping admits nothing by itself: the filter pinhole of the
// translated connection does (for DNAT, the pinhole is keyed by the
// translated address, since the forward hook sees it after prerouting).
type Mapping struct {
	SNAT   bool
	Peer   netip.Addr
	Addr   netip.Addr
	Port   uint16
	ToAddr netip.Addr
	ToPort uint16 // DNAT only
}

func (m Mapping) String() string {
	if m.SNAT {
		return fmt.Sprintf("snat %s -> %s to %s", m.Peer, netip.AddrPortFrom(m.Addr, m.Port), m.ToAddr)
	}
	return fmt.Sprintf("dnat %s -> %s to %s", m.Peer, netip.AddrPortFrom(m.Addr, m.Port), netip.AddrPortFrom(m.ToAddr, m.ToPort))
}

// Valid reports whether all addresses are of one family and the ports
// that must be set are.
func (m Mapping) Valid() bool {
	v4 := m.Peer.Is4()
	for _, a := range []netip.Addr{m.Peer, m.Addr, m.ToAddr} {
		if !a.IsValid() || a.Is4() != v4 || a.Zone() != "" || a.Is4In6() {
			return false
		}
	}
	return m.Port != 0 && (m.SNAT || m.ToPort != 0)
}

// ErrInvalidMapping is returned for a mapping that mixes address families
// or lacks a port.
var ErrInvalidMapping = errors.New("invalid NAT mapping")

// newMappingOp checks m and returns the change to queue.
func newMappingOp(m Mapping, add bool, timeout time.Duration) (op, error) {
	if !m.Valid() {
		return op{}, fmt.Errorf("NAT mapping %v: %w", m, ErrInvalidMapping)
	}
	return op{m: m, add: add, timeout: timeout}, nil
}

// AddMapping queues `nft add element inet ftpgate nat_dnat_v4 { PEER . ADDR . PORT : TO . TOPORT timeout T }`
// (nat_snat_v4 for SNAT: `{ PEER . ADDR . PORT : TO }`).
func (q *opQueue) AddMapping(m Mapping, timeout time.Duration) error {
	return q.enqueue(newMappingOp(m, true, timeout))
}

// DelMapping queues the removal of m, idempotent like DelPinhole.
func (q *opQueue) DelMapping(m Mapping) error { return q.enqueue(newMappingOp(m, false, 0)) }
