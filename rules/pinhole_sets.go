package rules

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nftables data type numbers (nftables' include/datatype.h), which name
// the fields of a set key.
const (
	typeIPAddr      = 7
	typeIP6Addr     = 8
	typeInetService = 13
	typeBits        = 6 // a concatenated key type packs one field per 6 bits
)

// From linux/netfilter/nf_tables.h; golang.org/x/sys lacks them.
const (
	nftaSetDescConcat = 2  // NFTA_SET_DESC_CONCAT
	nftaSetFieldLen   = 1  // NFTA_SET_FIELD_LEN
	nftaSetExpr       = 17 // NFTA_SET_EXPR
	nftSetConcat      = 0x80
)

// Each pinhole admits one packet: the set's elements carry
//
//	limit rate 1/week burst 1 packets
//
// A lookup evaluates the element's stateful expressions, and a limit takes
// its token under a spinlock, so of two SYNs that look the same pinhole up
// at once on two CPUs exactly one passes the lookup; the other finds no
// token left. Deleting the element afterwards, in the same rule, is only
// the cleanup: on its own, a lookup and a delete are two steps, and both
// SYNs could pass the lookup before either deletes. A week is far beyond
// any pinhole's lifetime (see MaxPinholeTimeout), so the token never
// comes back.
const (
	pinholeLimitRate  = 1
	pinholeLimitUnit  = 7 * 24 * 60 * 60 // seconds
	pinholeLimitBurst = 1
)

// MaxPinholeTimeout is the longest pinhole lifetime the one-packet limit
// above allows with a wide margin.
const MaxPinholeTimeout = 24 * 60 * 60 // seconds

// Names of the pinhole sets.
const (
	SetV4 = "ftp_data_pinholes_v4"
	SetV6 = "ftp_data_pinholes_v6"
)

// pinholeSets are ftp_data_pinholes_v4 and _v6, whose elements admit one
// data connection each.
type pinholeSets struct{ setPair }

// newPinholeSets describes the two pinhole sets (createPinholeSets makes
// them: google/nftables cannot).
func newPinholeSets(t *nftables.Table, size uint32) pinholeSets {
	mk := func(name string, addr nftables.SetDatatype, id uint32) *nftables.Set {
		return &nftables.Set{
			ID:            id, // fixed, so that the messages are the same every time
			Table:         t,
			Name:          name,
			KeyType:       nftables.MustConcatSetType(addr, addr, nftables.TypeInetService),
			Concatenation: true,
			HasTimeout:    true,
			Dynamic:       true,
			Size:          size,
			Comment:       pinholeSetComment,
		}
	}
	return pinholeSets{setPair{mk(SetV4, nftables.TypeIPAddr, 1), mk(SetV6, nftables.TypeIP6Addr, 2)}}
}

// queuePinhole queues the addition (with its lifetime) or the removal of
// one pinhole:
//
//	nft add element inet ftpgate ftp_data_pinholes_v4 { PEER . ADDR . PORT timeout T }
//	nft delete element inet ftpgate ftp_data_pinholes_v4 { PEER . ADDR . PORT }
func (s pinholeSets) queuePinhole(conn *nftables.Conn, p Pinhole, add bool, timeout time.Duration) error {
	return queueTimedElements(conn, s.forAddr(p.Peer), [][]byte{key(p)}, add, timeout)
}

// key encodes a pinhole as its set key: peer . addr . port, each field
// padded to a multiple of four bytes as concatenations require.
func key(p Pinhole) []byte {
	var b []byte
	if p.Peer.Is4() {
		b = make([]byte, 0, 12)
		a, c := p.Peer.As4(), p.Addr.As4()
		b = append(append(b, a[:]...), c[:]...)
	} else {
		b = make([]byte, 0, 36)
		a, c := p.Peer.As16(), p.Addr.As16()
		b = append(append(b, a[:]...), c[:]...)
	}
	return append(b, byte(p.Port>>8), byte(p.Port), 0, 0)
}

// decodeKey is the reverse of key.
func decodeKey(k []byte) (Pinhole, bool) {
	switch len(k) {
	case 12:
		return Pinhole{
			Peer: netip.AddrFrom4([4]byte(k[0:4])),
			Addr: netip.AddrFrom4([4]byte(k[4:8])),
			Port: uint16(k[8])<<8 | uint16(k[9]),
		}, true
	case 36:
		return Pinhole{
			Peer: netip.AddrFrom16([16]byte(k[0:16])),
			Addr: netip.AddrFrom16([16]byte(k[16:32])),
			Port: uint16(k[32])<<8 | uint16(k[33]),
		}, true
	}
	return Pinhole{}, false
}

const pinholeSetComment = "announced FTP data connections: connecting peer . announced address . announced port"

// newPinholeSetMessage builds the message that creates a pinhole set:
//
//	nft add set inet TABLE NAME { type ipv4_addr . ipv4_addr . inet_service;
//	    size SIZE; flags dynamic,timeout; limit rate 1/week burst 1 packets;
//	    comment "..."; }
//
// It is built here rather than by google/nftables, whose sets cannot carry
// a stateful expression other than a counter.
func newPinholeSetMessage(table, name string, v6 bool, size uint32, id uint32) (netlink.Message, error) {
	addrType, addrLen := uint32(typeIPAddr), uint32(4)
	if v6 {
		addrType, addrLen = typeIP6Addr, 16
	}
	keyType := addrType<<(2*typeBits) | addrType<<typeBits | typeInetService
	keyLen := 2*addrLen + 4

	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.String(unix.NFTA_SET_TABLE, table)
	ae.String(unix.NFTA_SET_NAME, name)
	ae.Uint32(unix.NFTA_SET_FLAGS, unix.NFT_SET_TIMEOUT|unix.NFT_SET_EVAL|nftSetConcat)
	ae.Uint32(unix.NFTA_SET_KEY_TYPE, keyType)
	ae.Uint32(unix.NFTA_SET_KEY_LEN, keyLen)
	ae.Uint32(unix.NFTA_SET_ID, id)
	ae.Nested(unix.NFTA_SET_DESC, func(desc *netlink.AttributeEncoder) error {
		desc.Uint32(unix.NFTA_SET_DESC_SIZE, size)
		desc.Nested(nftaSetDescConcat, func(concat *netlink.AttributeEncoder) error {
			for _, l := range []uint32{addrLen, addrLen, 2} {
				concat.Nested(unix.NFTA_LIST_ELEM, func(field *netlink.AttributeEncoder) error {
					field.Uint32(nftaSetFieldLen, l)
					return nil
				})
			}
			return nil
		})
		return nil
	})
	ae.Bytes(unix.NFTA_SET_USERDATA, userdata.AppendString(nil, userdata.NFTNL_UDATA_SET_COMMENT, pinholeSetComment))
	ae.Nested(nftaSetExpr, func(e *netlink.AttributeEncoder) error {
		e.String(unix.NFTA_EXPR_NAME, "limit")
		e.Nested(unix.NFTA_EXPR_DATA, func(l *netlink.AttributeEncoder) error {
			l.Uint64(unix.NFTA_LIMIT_RATE, pinholeLimitRate)
			l.Uint64(unix.NFTA_LIMIT_UNIT, pinholeLimitUnit)
			l.Uint32(unix.NFTA_LIMIT_BURST, pinholeLimitBurst)
			l.Uint32(unix.NFTA_LIMIT_TYPE, unix.NFT_LIMIT_PKTS)
			l.Uint32(unix.NFTA_LIMIT_FLAGS, 0)
			return nil
		})
		return nil
	})
	attrs, err := ae.Encode()
	if err != nil {
		return netlink.Message{}, fmt.Errorf("encoding set %s: %w", name, err)
	}
	return netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWSET),
			Flags: netlink.Request | netlink.Acknowledge | netlink.Create,
		},
		Data: append(nfgenHeader(unix.NFPROTO_INET, 0), attrs...),
	}, nil
}

func nfgenHeader(family uint8, resID uint16) []byte {
	return []byte{family, unix.NFNETLINK_V0, byte(resID >> 8), byte(resID)}
}

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
	// the batch's begin and end; all are read, so that none is left for
	// the next request on this socket to take for its own.
	var first error
	for range len(msgs) - 2 {
		if _, err := conn.Receive(); err != nil && first == nil {
			first = fmt.Errorf("creating the pinhole sets of table inet %s (a set limit needs Linux 5.11 or later): %w", table, err)
		}
	}
	return first
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
