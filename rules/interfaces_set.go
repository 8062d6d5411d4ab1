package rules

import "github.com/google/nftables"

// InterfacesSet holds the interfaces of --interface (inline).
const InterfacesSet = "ftp_interfaces"

// newInterfacesSet describes the set of the interfaces inline capture is
// scoped to, and its elements.
//
//	nft add set inet ftpgate ftp_interfaces { type ifname; elements = { "lan0", ... }; }
func newInterfacesSet(t *nftables.Table, names []string) (*nftables.Set, []nftables.SetElement) {
	s := &nftables.Set{ID: 11, Table: t, Name: InterfacesSet, KeyType: nftables.TypeIFName,
		Comment: "the interfaces whose FTP control traffic ftpgate copies and whose early data SYNs it holds (--interface)"}
	elems := make([]nftables.SetElement, len(names))
	for i, name := range names {
		k := make([]byte, 16) // IFNAMSIZ, zero-padded
		copy(k, name)
		elems[i] = nftables.SetElement{Key: k}
	}
	return s, elems
}
