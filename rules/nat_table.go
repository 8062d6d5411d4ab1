package rules

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// NATTableSuffix names the NAT packet path's kept table after ftpgate's:
// inet ftpgate_nat beside inet ftpgate.
const NATTableSuffix = "_nat"

// The kept table's sets of shifted connections.
const (
	ShiftedV4 = "ftp_control_shifted_v4"
	ShiftedV6 = "ftp_control_shifted_v6"
)

// keptTable is the packet path's table of shifted connections: those
// whose sequence numbers ftpgate shifts, which cannot go on without it.
// It has no owner flag, so it outlives the process: across a restart or
// kill -9 their segments stay queued, and are dropped while nobody
// listens on the queue (no bypass), never passed unshifted. It holds
// only them (their own queue and reply-check chains), so that it blocks
// nothing else while no ftpgate runs: new translated connections, and
// those never shifted, are in the owned table, which goes with the
// process. It exists only while shifted connections need it: made at the
// first one (ShiftTranslated), adopted by the next ftpgate, removed by a
// stop that keeps nothing (StopTranslating).
type keptTable struct {
	name    string
	table   *nftables.Table // nil while it does not exist
	shifted setPair
	queue   expr.Any // the packet path's queue, of the kind inline took
	timeout time.Duration
}

func newKeptTable(name string, size uint32) *keptTable {
	t := &nftables.Table{Name: name, Family: nftables.TableFamilyINet}
	return &keptTable{name: name, shifted: translatedSets(t, ShiftedV4, ShiftedV6, size, 12,
		"translated FTP control connections whose sequence numbers ftpgate shifts: held for it across a restart")}
}

// find notes whether a previous ftpgate left the table (adopted in
// queuePacketPath, once the queue's kind is known).
func (k *keptTable) find(conn *nftables.Conn) {
	if _, err := conn.ListTableOfFamily(k.name, nftables.TableFamilyINet); err == nil {
		k.table = k.shifted.v4.Table
	}
}

// adopt queues the table as this ftpgate makes it: chains emptied and
// their rules added anew, the sets and the connections in them kept.
//
//	nft flush chain inet ftpgate_nat CHAIN    (each chain it has)
//	nft add chain inet ftpgate_nat ...
func (k *keptTable) adopt(c *chains) {
	if chains, err := c.conn.ListChainsOfTableFamily(nftables.TableFamilyINet); err == nil {
		for _, ch := range chains {
			if ch.Table.Name == k.name {
				c.conn.FlushChain(&nftables.Chain{Name: ch.Name, Table: k.table})
			}
		}
	}
	k.queueCreate(c)
}

// queueCreate queues the table, its sets (kept if there) and its chains.
func (k *keptTable) queueCreate(c *chains) {
	k.table = c.conn.AddTable(k.shifted.v4.Table)
	_ = k.shifted.add(c.conn)
	c.queueTranslatedChains(k.table, k.shifted)
}

// ShiftTranslated moves a translated control connection, in one
// transaction, from the owned table's set to the kept table's, made if
// it is not there yet: ftpgate has just rewritten one of its lines to
// another length. client is the client's own address, serverSeen the
// server as the client addressed it.
//
//	nft add element inet ftpgate_nat ftp_control_shifted_v4 { CLIENT . CPORT . SERVER . SPORT timeout T }
//	nft delete element inet ftpgate ftp_control_translated_v4 { CLIENT . CPORT . SERVER . SPORT }
func (n *Nftables) ShiftTranslated(client, serverSeen netip.AddrPort) error {
	return n.keepTranslated(client, serverSeen, true)
}

// KeepTranslated adds a translated control connection that ftpgate
// shifts, and that is in no set now (carried over from the last run),
// to the kept table's set, made if it is not there yet.
//
//	nft add element inet ftpgate_nat ftp_control_shifted_v4 { CLIENT . CPORT . SERVER . SPORT timeout T }
func (n *Nftables) KeepTranslated(client, serverSeen netip.AddrPort) error {
	return n.keepTranslated(client, serverSeen, false)
}

func (n *Nftables) keepTranslated(client, serverSeen netip.AddrPort, move bool) error {
	k := n.chains.kept
	if k == nil {
		return nil
	}
	if k.table == nil {
		k.queueCreate(n.chains)
	}
	key := [][]byte{translatedKey(client, serverSeen)}
	if err := queueTimedElements(n.conn, k.shifted.forAddr(client.Addr()), key, true, n.cfg.NAT.TranslatedTimeout); err != nil {
		return err
	}
	if !move {
		if err := n.conn.Flush(); err != nil {
			return fmt.Errorf("adding translated control connection %s -> %s to table inet %s: %w", client, serverSeen, k.name, err)
		}
		return nil
	}
	if err := queueTimedElements(n.conn, n.sets.nat.translated.forAddr(client.Addr()), key, false, 0); err != nil {
		return err
	}
	if err := n.conn.Flush(); err != nil {
		return fmt.Errorf("moving translated control connection %s -> %s to table inet %s: %w", client, serverSeen, k.name, err)
	}
	return nil
}

// StopTranslating is the packet path's part of a stop. With keep (some
// connection's sequence numbers are shifted: the next ftpgate must carry
// them on) the kept table stays; without, it goes, if it is there.
//
//	nft delete table inet ftpgate_nat
func (n *Nftables) StopTranslating(keep bool) error {
	k := n.chains.kept
	if k == nil || k.table == nil || keep {
		return nil
	}
	n.conn.DelTable(k.table)
	if err := n.conn.Flush(); err != nil {
		return fmt.Errorf("removing table inet %s: %w", k.name, err)
	}
	k.table = nil
	return nil
}
