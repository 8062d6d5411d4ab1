package rules

import (
	"encoding/binary"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// tableFlagOwner is NFT_TABLE_F_OWNER (Linux 5.12): the table belongs to
// the netlink socket that created it, only that socket may change it, and
// the kernel deletes it when that socket closes, even after kill -9.
const tableFlagOwner = 0x2

// createOwnedTable creates, in one batch on conn, an inet table with the
// owner flag and the two pinhole sets:
//
//	nft add table inet NAME { flags owner; }
//	nft add set inet NAME ftp_data_pinholes_v4 { ...; limit rate 1/week burst 1 packets; }
//	nft add set inet NAME ftp_data_pinholes_v6 { ...; limit rate 1/week burst 1 packets; }
//
// google/nftables v0.3.0 always sends table flags 0 and cannot give a set
// a limit, so these messages are built by hand and sent on the very socket
// google/nftables uses later: ownership is tied to the socket's port id.
func createOwnedTable(conn *netlink.Conn, name string, setSize uint32) error {
	msgs, err := ownedTableMessages(name, setSize)
	if err != nil {
		return err
	}
	if _, err := conn.SendMessages(msgs); err != nil {
		return fmt.Errorf("sending new table %s: %w", name, err)
	}
	// One acknowledgement (or error) comes back for each message between
	// the batch's begin and end.
	for range len(msgs) - 2 {
		if _, err := conn.Receive(); err != nil {
			return fmt.Errorf("creating table inet %s with owner flag and its pinhole sets: %w", name, err)
		}
	}
	return nil
}

// ownedTableMessages is the batch createOwnedTable sends.
func ownedTableMessages(name string, setSize uint32) ([]netlink.Message, error) {
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.String(unix.NFTA_TABLE_NAME, name)
	ae.Uint32(unix.NFTA_TABLE_FLAGS, tableFlagOwner)
	attrs, err := ae.Encode()
	if err != nil {
		return nil, fmt.Errorf("encoding table %s: %w", name, err)
	}
	msgs := []netlink.Message{
		{
			Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN), Flags: netlink.Request},
			Data:   nfgenHeader(0, unix.NFNL_SUBSYS_NFTABLES),
		},
		{
			Header: netlink.Header{
				Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWTABLE),
				Flags: netlink.Request | netlink.Acknowledge | netlink.Create | netlink.Excl,
			},
			Data: append(nfgenHeader(unix.NFPROTO_INET, 0), attrs...),
		},
	}
	for i, set := range []struct {
		name string
		v6   bool
	}{{SetV4, false}, {SetV6, true}} {
		m, err := newPinholeSetMessage(name, set.name, set.v6, setSize, uint32(i+1))
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, m)
	}
	return append(msgs, netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_END), Flags: netlink.Request},
		Data:   nfgenHeader(0, unix.NFNL_SUBSYS_NFTABLES),
	}), nil
}
