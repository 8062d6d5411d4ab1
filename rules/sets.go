package rules

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/google/nftables"
)

// setPair is one set (or map) of each address family.
type setPair struct{ v4, v6 *nftables.Set }

// of returns the IPv6 set if v6, else the IPv4 one.
func (s setPair) of(v6 bool) *nftables.Set {
	if v6 {
		return s.v6
	}
	return s.v4
}

// forAddr returns the set of a's family.
func (s setPair) forAddr(a netip.Addr) *nftables.Set { return s.of(!a.Is4()) }

// add queues both sets, empty.
//
//	nft add set inet ftpgate NAME_v4 { ... }
//	nft add set inet ftpgate NAME_v6 { ... }
func (s setPair) add(conn *nftables.Conn) error {
	for _, set := range []*nftables.Set{s.v4, s.v6} {
		if err := conn.AddSet(set, nil); err != nil {
			return fmt.Errorf("adding set %s: %w", set.Name, err)
		}
	}
	return nil
}

// tableSets are the sets and maps whose elements commits change.
type tableSets struct {
	pinholes pinholeSets
	peers    peersSets
	scoped   scopedSets
	nat      *natMaps // nil without NAT
}

// newTableSets describes the sets of table; nothing is sent.
func newTableSets(t *nftables.Table, cfg Config) *tableSets {
	s := &tableSets{
		pinholes: newPinholeSets(t, cfg.MaxPinholes),
		peers:    newPeersSets(t, cfg.MaxPeers),
		scoped:   newScopedSets(t, cfg.NAT != nil),
	}
	if cfg.NAT != nil {
		s.nat = newNATMaps(t, cfg.MaxPinholes, cfg.MaxPeers, cfg.NAT.Packet)
	}
	return s
}

// queue queues the messages of one change on conn.
func (s *tableSets) queue(conn *nftables.Conn, o op) error {
	switch {
	case o.m.Peer.IsValid():
		if s.nat == nil {
			return fmt.Errorf("NAT mapping %v: NAT is not set up", o.m)
		}
		return s.nat.queueMapping(conn, o.m, o.add, o.timeout)
	case o.scoped != nil:
		return s.scoped.queueRange(conn, *o.scoped, o.add)
	case o.peers.Client.IsValid():
		return s.peers.queuePeers(conn, o.peers, o.add)
	}
	return s.pinholes.queuePinhole(conn, o.p, o.add, o.timeout)
}

// listPinholes lists the pinholes the kernel holds now. (The peers sets
// are read too, but their keys decode as no pinhole.)
//
//	nft list set inet ftpgate ftp_data_pinholes_v4
func (s *tableSets) listPinholes(conn *nftables.Conn) ([]Pinhole, error) {
	var out []Pinhole
	for _, set := range []*nftables.Set{s.pinholes.v4, s.pinholes.v6, s.peers.v4, s.peers.v6} {
		elems, err := conn.GetSetElements(set)
		if err != nil {
			return nil, fmt.Errorf("listing set %s: %w", set.Name, err)
		}
		for _, e := range elems {
			if p, ok := decodeKey(e.Key); ok {
				out = append(out, p)
			}
		}
	}
	return out, nil
}

// queueTimedElements queues the addition or removal of elements with
// keys. A removal adds them first with a short timeout, so that it cannot
// fail on an element the kernel consumed or expired meanwhile (deleting
// an absent element would fail the whole batch), and so that even if the
// delete were lost, the stand-in would not linger.
func queueTimedElements(conn *nftables.Conn, s *nftables.Set, keys [][]byte, add bool, timeout time.Duration) error {
	elems := make([]nftables.SetElement, len(keys))
	for i, k := range keys {
		elems[i] = nftables.SetElement{Key: k, Timeout: timeout}
	}
	if add {
		return conn.SetAddElements(s, elems)
	}
	for i := range elems {
		elems[i].Timeout = time.Second
	}
	if err := conn.SetAddElements(s, elems); err != nil {
		return err
	}
	return conn.SetDeleteElements(s, elems)
}
