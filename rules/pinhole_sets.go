package rules

import (
	"encoding/binary"
	"fmt"

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

// pinholeSet describes one of the two pinhole sets (createPinholeSets
// makes them).
func (n *Nftables) pinholeSet(name string, addr nftables.SetDatatype, id uint32) *nftables.Set {
	return &nftables.Set{
		ID:            id,
		Table:         n.table,
		Name:          name,
		KeyType:       nftables.MustConcatSetType(addr, addr, nftables.TypeInetService),
		Concatenation: true,
		HasTimeout:    true,
		Dynamic:       true,
		Size:          n.cfg.MaxPinholes,
		Comment:       pinholeSetComment,
	}
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
