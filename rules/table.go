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

// createOwnedTable creates an inet table with the owner flag on conn:
//
//	nft add table inet NAME { flags owner; }
//
// google/nftables v0.3.0 always sends table flags 0, so this one message
// is built by hand and sent on the very socket google/nftables uses later:
// ownership is tied to the socket's port id.
func createOwnedTable(conn *netlink.Conn, name string) error {
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.String(unix.NFTA_TABLE_NAME, name)
	ae.Uint32(unix.NFTA_TABLE_FLAGS, tableFlagOwner)
	attrs, err := ae.Encode()
	if err != nil {
		return fmt.Errorf("encoding table %s: %w", name, err)
	}
	nfgen := func(family uint8, resID uint16) []byte {
		return []byte{family, unix.NFNETLINK_V0, byte(resID >> 8), byte(resID)}
	}
	msgs := []netlink.Message{
		{
			Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN), Flags: netlink.Request},
			Data:   nfgen(0, unix.NFNL_SUBSYS_NFTABLES),
		},
		{
			Header: netlink.Header{
				Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWTABLE),
				Flags: netlink.Request | netlink.Acknowledge | netlink.Create | netlink.Excl,
			},
			Data: append(nfgen(unix.NFPROTO_INET, 0), attrs...),
		},
		{
			Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_END), Flags: netlink.Request},
			Data:   nfgen(0, unix.NFNL_SUBSYS_NFTABLES),
		},
	}
	if _, err := conn.SendMessages(msgs); err != nil {
		return fmt.Errorf("sending new table %s: %w", name, err)
	}
	// One acknowledgement (or error) comes back for the NEWTABLE message.
	if _, err := conn.Receive(); err != nil {
		return fmt.Errorf("creating table inet %s with owner flag: %w", name, err)
	}
	return nil
}
