package rules

import (
	"time"

	"github.com/google/nftables"
)

// Names of the NAT sets and maps.
const (
	ProxyNextV4 = "ftp_control_to_proxy_v4"
	ProxyNextV6 = "ftp_control_to_proxy_v6"
	DNATMapV4   = "ftp_data_dnat_v4"
	DNATMapV6   = "ftp_data_dnat_v6"
	SNATMapV4   = "ftp_data_snat_v4"
	SNATMapV6   = "ftp_data_snat_v6"
	// The NAT packet path's translated control connections.
	TranslatedV4 = "ftp_control_translated_v4"
	TranslatedV6 = "ftp_control_translated_v6"
)

// proxyNextTimeout is how long a translated control connection's tuple
// waits for the client to send its SYN again: Linux retries after 1, 3
// and 7 seconds, others after 3 and 9.
const proxyNextTimeoutSeconds = 30

// natMaps are the sets and maps of NAT (see NATConfig): the control
// connections whose next SYN goes to the control proxy, and the data
// connections' mappings.
type natMaps struct {
	proxyNext  setPair // the control proxy's (nil sets in the packet path)
	translated setPair // the packet path's (nil sets with the proxy)
	dnat       setPair
	snat       setPair
}

// newNATMaps describes the NAT sets and maps; the proxy sets have one
// element per control connection (peers), the maps one per pinhole.
//
//	nft add set inet ftpgate ftp_control_to_proxy_v4 { type ipv4_addr . inet_service . ipv4_addr . inet_service; flags dynamic,timeout; timeout 30s; }
//	nft add map inet ftpgate ftp_data_dnat_v4 { type ipv4_addr . ipv4_addr . inet_service : ipv4_addr . inet_service; flags timeout; }
//	nft add map inet ftpgate ftp_data_snat_v4 { type ipv4_addr . ipv4_addr . inet_service : ipv4_addr; flags timeout; }
//
// In the packet path, the translated control connections instead, each
// kept while its segments come (NATConfig.TranslatedTimeout):
//
//	nft add set inet ftpgate ftp_control_translated_v4 { type ipv4_addr . inet_service . ipv4_addr . inet_service; flags dynamic,timeout; }
func newNATMaps(t *nftables.Table, pinholes, peers uint32, packet bool) *natMaps {
	proxyNext := func(name string, addr nftables.SetDatatype, id uint32) *nftables.Set {
		return &nftables.Set{
			ID: id, Table: t, Name: name,
			KeyType:       nftables.MustConcatSetType(addr, nftables.TypeInetService, addr, nftables.TypeInetService),
			Concatenation: true, HasTimeout: true, Dynamic: true,
			Timeout: proxyNextTimeoutSeconds * 1e9,
			Size:    peers,
			Comment: "translated FTP control connections (original tuple) whose SYN was dropped: the next one goes to ftpgate's control proxy",
		}
	}
	natMap := func(name string, addr nftables.SetDatatype, snat bool, id uint32) *nftables.Set {
		data := nftables.MustConcatSetType(addr, nftables.TypeInetService)
		comment := "announced FTP data connections through NAT: peer . public address . port : address . port"
		if snat {
			data = addr
			comment = "FTP data connections through NAT that leave with the address the peer knows: peer . address . port : source address"
		}
		return &nftables.Set{
			ID: id, Table: t, Name: name, IsMap: true,
			KeyType:       nftables.MustConcatSetType(addr, addr, nftables.TypeInetService),
			DataType:      data,
			Concatenation: true, HasTimeout: true,
			Size:    pinholes,
			Comment: comment,
		}
	}
	m := &natMaps{
		dnat: setPair{natMap(DNATMapV4, nftables.TypeIPAddr, false, 7), natMap(DNATMapV6, nftables.TypeIP6Addr, false, 8)},
		snat: setPair{natMap(SNATMapV4, nftables.TypeIPAddr, true, 9), natMap(SNATMapV6, nftables.TypeIP6Addr, true, 10)},
	}
	if !packet {
		m.proxyNext = setPair{proxyNext(ProxyNextV4, nftables.TypeIPAddr, 5), proxyNext(ProxyNextV6, nftables.TypeIP6Addr, 6)}
		return m
	}
	m.translated = translatedSets(t, TranslatedV4, TranslatedV6, peers, 5,
		"translated FTP control connections (original tuple): ftpgate reads and rewrites every segment of theirs")
	return m
}

// translatedSets describes a pair of sets of translated control
// connections' original tuples, v4 and v6, with set IDs id and id+1.
func translatedSets(t *nftables.Table, v4, v6 string, size, id uint32, comment string) setPair {
	mk := func(name string, addr nftables.SetDatatype, id uint32) *nftables.Set {
		return &nftables.Set{
			ID: id, Table: t, Name: name,
			KeyType:       nftables.MustConcatSetType(addr, nftables.TypeInetService, addr, nftables.TypeInetService),
			Concatenation: true, HasTimeout: true, Dynamic: true,
			Size:    size,
			Comment: comment,
		}
	}
	return setPair{mk(v4, nftables.TypeIPAddr, id), mk(v6, nftables.TypeIP6Addr, id+1)}
}

// control is the set pair of translated control connections.
func (m *natMaps) control() setPair {
	if m.translated.v4 != nil {
		return m.translated
	}
	return m.proxyNext
}

// add queues the sets and maps, empty.
func (m *natMaps) add(conn *nftables.Conn) error {
	for _, p := range []setPair{m.control(), m.dnat, m.snat} {
		if err := p.add(conn); err != nil {
			return err
		}
	}
	return nil
}

// mapFor returns the map of a mapping.
func (m *natMaps) mapFor(x Mapping) *nftables.Set {
	if x.SNAT {
		return m.snat.forAddr(x.Peer)
	}
	return m.dnat.forAddr(x.Peer)
}

// queueMapping queues the addition (with its lifetime) or removal of a
// NAT map element:
//
//	nft add element inet ftpgate ftp_data_dnat_v4 { PEER . ADDR . PORT : TO . TOPORT timeout T }
//	nft delete element inet ftpgate ftp_data_dnat_v4 { PEER . ADDR . PORT }
//
// A removal first adds the element with a short timeout, like a
// pinhole's (see queueTimedElements), so that it cannot fail on an
// absent element.
func (m *natMaps) queueMapping(conn *nftables.Conn, x Mapping, add bool, timeout time.Duration) error {
	s := m.mapFor(x)
	e := []nftables.SetElement{{Key: mappingKey(x), Val: mappingData(x), Timeout: timeout}}
	if add {
		return conn.SetAddElements(s, e)
	}
	e[0].Timeout = time.Second
	if err := conn.SetAddElements(s, e); err != nil {
		return err
	}
	return conn.SetDeleteElements(s, []nftables.SetElement{{Key: e[0].Key}})
}

// mappingKey is the map key: peer . addr . port, padded like a pinhole's.
func mappingKey(m Mapping) []byte {
	return key(Pinhole{Peer: m.Peer, Addr: m.Addr, Port: m.Port})
}

// mappingData is the map value: addr . port for DNAT, addr for SNAT.
func mappingData(m Mapping) []byte {
	b := m.ToAddr.AsSlice()
	if m.SNAT {
		return b
	}
	return append(b, byte(m.ToPort>>8), byte(m.ToPort), 0, 0)
}
