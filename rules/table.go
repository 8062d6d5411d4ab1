package rules

import (
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// createPinholeSets creates, in one batch on conn, the two pinhole sets:
//
//	nft add set inet NAME ftp_data_pinholes_v4 { ...; limit rate 1/week burst 1 packets; }
//	nft add set inet NAME ftp_data_pinholes_v6 { ...; limit rate 1/week burst 1 packets; }
//
// google/nftables cannot give a set any stateful expression but a
// counter, so these two messages are built by hand (newPinholeSetMessage)
// and sent on the very socket google/nftables uses, the one that owns the
// table: no other socket may change it.
func createPinholeSets(conn *netlink.Conn, table string, size uint32) error {
	msgs, err := pinholeSetsBatch(table, size)
	if err != nil {
		return err
	}
	if _, err := conn.SendMessages(msgs); err != nil {
		return fmt.Errorf("sending the pinhole sets of table %s: %w", table, err)
	}
	// One acknowledgement (or error) comes back for each message between
	// the batch's begin and end.
	for range len(msgs) - 2 {
		if _, err := conn.Receive(); err != nil {
			return fmt.Errorf("creating the pinhole sets of table inet %s (a set limit needs Linux 5.11 or later): %w", table, err)
		}
	}
	return nil
}

// pinholeSetsBatch is the batch createPinholeSets sends.
func pinholeSetsBatch(table string, size uint32) ([]netlink.Message, error) {
	msgs := []netlink.Message{{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN), Flags: netlink.Request},
		Data:   nfgenHeader(0, unix.NFNL_SUBSYS_NFTABLES),
	}}
	for i, set := range []struct {
		name string
		v6   bool
	}{{SetV4, false}, {SetV6, true}} {
		m, err := newPinholeSetMessage(table, set.name, set.v6, size, uint32(i+1))
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
