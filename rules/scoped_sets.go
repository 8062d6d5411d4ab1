package rules

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
)

// Names of the FTPS sets.
const (
	ScopedV4       = "ftps_ranges_v4"
	ScopedV6       = "ftps_ranges_v6"
	ScopedActiveV4 = "ftps_active_v4"
	ScopedActiveV6 = "ftps_active_v6"
	ScopedDNATV4   = "ftps_dnat_v4"
	ScopedDNATV6   = "ftps_dnat_v6"
)

// ftpsDataPort is implicit FTPS's data port (ftps-data), from which an
// implicit FTPS server connects in active mode.
const ftpsDataPort = 989

// scopedSets are the sets of FTPS sessions' scoped ranges (see
// ScopedRange): interval sets, whose elements live as long as the session.
type scopedSets struct {
	ranges setPair // client . server . the server's passive ports
	active setPair // server . client . the client's active ports
	dnat   setPair // maps of ranges through a port forward; nil without NAT
}

// newScopedSets describes the scoped sets, and with nat the maps.
//
//	nft add set inet ftpgate ftps_ranges_v4 { type ipv4_addr . ipv4_addr . inet_service; flags interval; }
//	nft add map inet ftpgate ftps_dnat_v4 { type ipv4_addr . ipv4_addr . inet_service : ipv4_addr; flags interval; }
func newScopedSets(t *nftables.Table, nat bool) scopedSets {
	mk := func(name string, addr nftables.SetDatatype, id uint32, comment string) *nftables.Set {
		return &nftables.Set{ID: id, Table: t, Name: name,
			KeyType:       nftables.MustConcatSetType(addr, addr, nftables.TypeInetService),
			Concatenation: true, Interval: true, Comment: comment}
	}
	const rc = "encrypted FTP sessions (FTPS): client . server . the server's passive ports, while the session lives"
	const ac = "implicit FTPS in active mode: server . client . the client's active ports, from port 989, while the session lives"
	s := scopedSets{
		ranges: setPair{mk(ScopedV4, nftables.TypeIPAddr, 12, rc), mk(ScopedV6, nftables.TypeIP6Addr, 13, rc)},
		active: setPair{mk(ScopedActiveV4, nftables.TypeIPAddr, 14, ac), mk(ScopedActiveV6, nftables.TypeIP6Addr, 15, ac)},
	}
	if nat {
		const dc = "FTPS through a port forward: client . public address . passive ports : server"
		s.dnat = setPair{mk(ScopedDNATV4, nftables.TypeIPAddr, 16, dc), mk(ScopedDNATV6, nftables.TypeIP6Addr, 17, dc)}
		s.dnat.v4.IsMap, s.dnat.v4.DataType = true, nftables.TypeIPAddr
		s.dnat.v6.IsMap, s.dnat.v6.DataType = true, nftables.TypeIP6Addr
	}
	return s
}

// add queues the sets, and the maps if there are any.
func (s scopedSets) add(conn *nftables.Conn) error {
	for _, p := range []setPair{s.ranges, s.active, s.dnat} {
		if p.v4 == nil {
			continue
		}
		if err := p.add(conn); err != nil {
			return err
		}
	}
	return nil
}

// queueRange queues the addition or removal of a scoped range's elements:
//
//	nft add element inet ftpgate ftps_ranges_v4 { CLIENT . SERVER . LO-HI }
//	nft add element inet ftpgate ftps_active_v4 { SERVER . CLIENT . LO-HI }      # Active
//	nft add element inet ftpgate ftps_dnat_v4 { CLIENT . PUBLIC . LO-HI : SERVER } # Public
func (s scopedSets) queueRange(conn *nftables.Conn, r ScopedRange, add bool) error {
	pad := func(port uint16) []byte { return []byte{byte(port >> 8), byte(port), 0, 0} }
	span := func(a, b netip.Addr) nftables.SetElement {
		pair := append(a.AsSlice(), b.AsSlice()...)
		return nftables.SetElement{Key: append(pair, pad(r.Lo)...), KeyEnd: append(pair[:len(pair):len(pair)], pad(r.Hi)...)}
	}
	type elem struct {
		s *nftables.Set
		e nftables.SetElement
	}
	v6 := r.Client.Is6()
	elems := []elem{{s.ranges.of(v6), span(r.Client, r.Server)}}
	if r.Active {
		elems = []elem{{s.active.of(v6), span(r.Server, r.Client)}}
	}
	if r.Public.IsValid() {
		if s.dnat.v4 == nil {
			return fmt.Errorf("scoped range %v: NAT is not set up", r)
		}
		e := span(r.Client, r.Public)
		e.Val = r.Server.AsSlice()
		elems = append(elems, elem{s.dnat.of(v6), e})
	}
	for _, x := range elems {
		// Interval sets have no element timeouts: a delete of an absent
		// element would fail the batch, so it is added first (a no-op if
		// present), then deleted.
		if err := conn.SetAddElements(x.s, []nftables.SetElement{x.e}); err != nil {
			return err
		}
		if !add {
			if err := conn.SetDeleteElements(x.s, []nftables.SetElement{x.e}); err != nil {
				return err
			}
		}
	}
	return nil
}
