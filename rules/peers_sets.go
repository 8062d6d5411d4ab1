package rules

import (
	"slices"

	"github.com/google/nftables"
)

// Names of the peers sets.
const (
	PeersV4 = "ftp_control_peers_v4"
	PeersV6 = "ftp_control_peers_v6"
)

// peersSets are ftp_control_peers_v4 and _v6: the hosts of running
// control sessions, between which a data SYN that finds no pinhole is held
// for the daemon rather than dropped (see holdExprs).
type peersSets struct{ setPair }

// newPeersSets describes the two peers sets; size counts two elements per
// pair of hosts.
//
//	nft add set inet ftpgate ftp_control_peers_v4 { type ipv4_addr . ipv4_addr; flags timeout; size N; }
func newPeersSets(t *nftables.Table, size uint32) peersSets {
	mk := func(name string, addr nftables.SetDatatype, id uint32) *nftables.Set {
		return &nftables.Set{
			ID:            id, // fixed, so that the messages are the same every time
			Table:         t,
			Name:          name,
			KeyType:       nftables.MustConcatSetType(addr, addr),
			Concatenation: true,
			HasTimeout:    true,
			Size:          size,
			Comment:       "hosts of running FTP control sessions, both ways: a data SYN between them that finds no pinhole waits for ftpgate",
		}
	}
	return peersSets{setPair{mk(PeersV4, nftables.TypeIPAddr, 3), mk(PeersV6, nftables.TypeIP6Addr, 4)}}
}

// queuePeers queues the addition or removal of a control session's hosts,
// both ways:
//
//	nft add element inet ftpgate ftp_control_peers_v4 { C . S, S . C }
//	nft delete element inet ftpgate ftp_control_peers_v4 { C . S, S . C }
func (s peersSets) queuePeers(conn *nftables.Conn, p Peers, add bool) error {
	return queueTimedElements(conn, s.forAddr(p.Client), peersKeys(p), add, 0)
}

// peersKeys encodes both directions of a control session's peers.
func peersKeys(p Peers) [][]byte {
	a, b := p.Client.AsSlice(), p.Server.AsSlice()
	ab := append(slices.Clone(a), b...)
	if p.Client == p.Server {
		return [][]byte{ab}
	}
	return [][]byte{ab, append(slices.Clone(b), a...)}
}
