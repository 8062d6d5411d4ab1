package rules

import (
	"encoding/binary"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// The expressions the rules are built of, each with the nft text it
// stands for.

func comment(s string) []byte { return userdata.AppendString(nil, userdata.TypeComment, s) }

var ne32 = binaryutil.NativeEndian.PutUint32

// The 32-bit registers: concatenations need them. NFT_REG32_00 is 8.
const keyReg = 8

// tcp: meta l4proto tcp
func tcp() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
	}
}

// nfproto: meta nfproto ipv4 (or ipv6)
func nfproto(v6 bool) []expr.Any {
	p := byte(unix.NFPROTO_IPV4)
	if v6 {
		p = unix.NFPROTO_IPV6
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

// tcpFlags: tcp flags & mask OP value
func tcpFlags(mask, value byte, op expr.CmpOp) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{mask}, Xor: []byte{0}},
		&expr.Cmp{Op: op, Register: 1, Data: []byte{value}},
	}
}

// synOnly: tcp flags & (syn | ack) == syn
func synOnly() []expr.Any { return tcpFlags(0x12, 0x02, expr.CmpOpEq) }

// ctState: ct state & bits OP 0
func ctState(bits uint32, op expr.CmpOp) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: ne32(bits), Xor: ne32(0)},
		&expr.Cmp{Op: op, Register: 1, Data: ne32(0)},
	}
}

// markIs: meta mark (or ct mark) & mask OP value
func markIs(key expr.Any, mask, value uint32, op expr.CmpOp) []expr.Any {
	return []expr.Any{
		key,
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: ne32(mask), Xor: ne32(0)},
		&expr.Cmp{Op: op, Register: 1, Data: ne32(value)},
	}
}

// reversePathFails: fib saddr . iif oif missing
//
// The route back to the packet's source does not leave through the
// interface it came in on: a forged source address. The check is
// ftpgate's own, so it does not depend on the admin's rp_filter, which
// covers IPv4 only.
func reversePathFails() []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: 1, FlagSADDR: true, FlagIIF: true, ResultOIF: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 0, 0, 0}},
	}
}

// addrPair loads source and destination address into keyReg onwards.
func addrPair(v6 bool) []expr.Any {
	off, alen := uint32(12), uint32(4)
	if v6 {
		off, alen = 8, 16
	}
	return []expr.Any{
		&expr.Payload{DestRegister: keyReg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: alen},
		&expr.Payload{DestRegister: keyReg + alen/4, Base: expr.PayloadBaseNetworkHeader, Offset: off + alen, Len: alen},
	}
}

var (
	accept = &expr.Verdict{Kind: expr.VerdictAccept}
	ret    = &expr.Verdict{Kind: expr.VerdictReturn}
)

// markSet: meta mark set meta mark | bit
func markSet(bit uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: ne32(^bit), Xor: ne32(bit)},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1, SourceRegister: true},
	}
}

// ctOriginalTuple loads a connection's original tuple into keyReg onwards:
// ct original ip saddr . ct original proto-src . ct original ip daddr . ct original proto-dst
func ctOriginalTuple(v6 bool) []expr.Any {
	src, dst, alen := expr.CtKeySRCIP, expr.CtKeyDSTIP, uint32(4)
	if v6 {
		src, dst, alen = expr.CtKeySRCIP6, expr.CtKeyDSTIP6, 16
	}
	r := uint32(keyReg)
	return []expr.Any{
		&expr.Ct{Register: r, Key: src, OptDirection: true},
		&expr.Ct{Register: r + alen/4, Key: expr.CtKeyPROTOSRC, OptDirection: true},
		&expr.Ct{Register: r + alen/4 + 1, Key: dst, OptDirection: true},
		&expr.Ct{Register: r + 2*alen/4 + 1, Key: expr.CtKeyPROTODST, OptDirection: true},
	}
}

// portIs: tcp dport (or sport) == port
func portIs(off uint32, port uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
	}
}

// carriesData matches a segment with data: loading the first byte after
// the TCP header (nft's @ih, the kernel's own header offsets, IP options
// and IPv6 extension headers included) fails for a pure ACK, and the
// failed load ends the rule. The masked compare is only there so that
// `nft list` can print it.
//
//	@ih,0,8 & 0x0 == 0x0
func carriesData() []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: payloadBaseInnerHeader, Offset: 0, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0}},
	}
}

// payloadBaseInnerHeader is NFT_PAYLOAD_INNER_HEADER (Linux 5.16): the
// bytes after the transport header, nft's @ih.
const payloadBaseInnerHeader expr.PayloadBase = 3

// dynsetOpDelete is NFT_DYNSET_OP_DELETE (Linux 5.14).
const dynsetOpDelete = 2
