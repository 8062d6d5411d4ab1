package rules

import (
	"fmt"

	"github.com/google/nftables"
)

// NATTableSuffix names the NAT packet path's table after ftpgate's:
// inet ftpgate_nat beside inet ftpgate.
const NATTableSuffix = "_nat"

// adoptNATTable queues the packet path's table (see NATConfig.Packet):
// created if it is not there, adopted if a previous ftpgate left it,
// with its chains emptied for the rules this one adds, and its sets,
// and the translated connections in them, kept.
//
//	nft add table inet ftpgate_nat
//	nft flush chain inet ftpgate_nat CHAIN    (each chain it has)
func adoptNATTable(conn *nftables.Conn, name string) (*nftables.Table, error) {
	t := conn.AddTable(&nftables.Table{Name: name, Family: nftables.TableFamilyINet})
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("%w: listing the chains of table inet %s: %v", ErrNoNftables, name, err)
	}
	for _, ch := range chains {
		if ch.Table.Name == name {
			conn.FlushChain(&nftables.Chain{Name: ch.Name, Table: t})
		}
	}
	return t, nil
}

// StopTranslating is the packet path's part of a stop. With keep (some
// connection's sequence numbers are shifted: the next ftpgate must carry
// them on) the table stays, its translated connections queued and
// dropped until then, but no new one is added; without, the table goes.
//
//	nft flush chain inet ftpgate_nat detect_translated_ftp_control
//	nft delete table inet ftpgate_nat
func (n *Nftables) StopTranslating(keep bool) error {
	if n.chains.natTable == nil {
		return nil
	}
	t := n.chains.natTable
	if keep {
		n.conn.FlushChain(&nftables.Chain{Name: natDetectChain, Table: t})
	} else {
		n.conn.DelTable(t)
	}
	if err := n.conn.Flush(); err != nil {
		return fmt.Errorf("stopping the NAT packet path in table inet %s: %w", t.Name, err)
	}
	return nil
}
