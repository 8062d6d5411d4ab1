package rules

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// ForgetTranslated stops the queueing of a translated control
// connection's segments to the packet path: the connection ended, or
// was cut and has lingered (nat.PacketPath). client is the client's own
// address, serverSeen the server as the client addressed it; shifted
// says it is in the kept table's set (ShiftTranslated).
//
//	nft delete element inet ftpgate ftp_control_translated_v4 { CLIENT . CPORT . SERVER . SPORT }
//	nft delete element inet ftpgate_nat ftp_control_shifted_v4 { ... }     (shifted)
//
// Like every removal it first adds the element with a short timeout, so
// that it cannot fail on one the kernel let expire meanwhile.
func (n *Nftables) ForgetTranslated(client, serverSeen netip.AddrPort, shifted bool) error {
	if n.sets.nat == nil || n.sets.nat.translated.v4 == nil {
		return nil
	}
	s := n.sets.nat.translated.forAddr(client.Addr())
	if k := n.chains.kept; shifted && k != nil && k.table != nil {
		s = k.shifted.forAddr(client.Addr())
	}
	if err := queueTimedElements(n.conn, s, [][]byte{translatedKey(client, serverSeen)}, false, 0); err != nil {
		return err
	}
	if err := n.conn.Flush(); err != nil {
		return fmt.Errorf("forgetting translated control connection %s -> %s: %w", client, serverSeen, err)
	}
	return nil
}

// AddTranslated queues a translated control connection's segments to
// the packet path again, as the detect chain did when it began: one
// carried over from the last run, whose element went with its table.
//
//	nft add element inet ftpgate ftp_control_translated_v4 { CLIENT . CPORT . SERVER . SPORT timeout T }
func (n *Nftables) AddTranslated(client, serverSeen netip.AddrPort) error {
	if n.sets.nat == nil || n.sets.nat.translated.v4 == nil {
		return nil
	}
	s := n.sets.nat.translated.forAddr(client.Addr())
	if err := queueTimedElements(n.conn, s, [][]byte{translatedKey(client, serverSeen)}, true, n.cfg.NAT.TranslatedTimeout); err != nil {
		return err
	}
	if err := n.conn.Flush(); err != nil {
		return fmt.Errorf("following translated control connection %s -> %s again: %w", client, serverSeen, err)
	}
	return nil
}

// translatedKey is the element of a connection's original tuple:
// address . port . address . port, each port padded to four bytes.
func translatedKey(client, serverSeen netip.AddrPort) []byte {
	var b []byte
	for _, ap := range []netip.AddrPort{client, serverSeen} {
		b = append(b, ap.Addr().AsSlice()...)
		b = binary.BigEndian.AppendUint16(b, ap.Port())
		b = append(b, 0, 0)
	}
	return b
}
