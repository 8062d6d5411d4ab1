package rules

import (
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/google/nftables/xt"
	"golang.org/x/sys/unix"
)

// QueueMode says how control packets reach the daemon inline.
type QueueMode string

const (
	// QueueNative is the nft `queue` statement (nft_queue).
	QueueNative QueueMode = "nft queue"
	// QueueXtables is the xtables NFQUEUE target through nft's compat
	// layer (nft_compat + xt_NFQUEUE), for kernels without nft_queue.
	QueueXtables QueueMode = "xtables NFQUEUE via nft compat"
)

// nfqFlagBypass is NFQ_FLAG_BYPASS of xt_NFQ_info_v3.
const nfqFlagBypass = 0x01

// AddQueueRules sends TCP packets from or to the control ports to queue
// num, in each of ftpgate's chains, after the pinhole rules:
//
//	nft add rule inet ftpgate mark_ftp_data_forward tcp dport 21 jump inspect_ftp_control
//	nft add rule inet ftpgate mark_ftp_data_forward tcp sport 21 jump inspect_ftp_control
//	nft add rule inet ftpgate inspect_ftp_control tcp flags & (fin|syn|rst) != 0 queue num N bypass
//	(and one rule per TCP data offset for segments that carry data)
//
// It tries the native statement first and falls back to the xtables
// target, and reports which one the running kernel took. With bypass, the
// kernel accepts the packets itself while no process listens on the
// queue, so control traffic fails open if the daemon dies.
func (n *Nftables) AddQueueRules(num uint16, ports []uint16) (QueueMode, error) {
	native := &expr.Queue{Num: num, Flag: expr.QueueFlagBypass}
	if err := n.addQueueRules(ports, native); err == nil {
		return QueueNative, nil
	}
	info := make([]byte, 8) // xt_NFQ_info_v3, host order, aligned to 8
	binary.NativeEndian.PutUint16(info[0:], num)
	binary.NativeEndian.PutUint16(info[2:], 1)
	binary.NativeEndian.PutUint16(info[4:], nfqFlagBypass)
	unknown := xt.Unknown(info)
	compat := &expr.Target{Name: "NFQUEUE", Rev: 3, Info: &unknown}
	if err := n.addQueueRules(ports, compat); err != nil {
		return "", fmt.Errorf("%w: neither the nft queue statement nor the xtables NFQUEUE target is available: %v", ErrNoNftables, err)
	}
	return QueueXtables, nil
}

// inspectChain holds the rules that pick, among FTP control packets, those
// ftpgate must see: SYN, FIN and RST (sessions start and end) and every
// segment that carries data. Pure ACKs, a large share of control
// packets, pass without the round trip through userspace.
const inspectChain = "inspect_ftp_control"

func (n *Nftables) addQueueRules(ports []uint16, queue expr.Any) error {
	inspect := n.conn.AddChain(&nftables.Chain{Name: inspectChain, Table: n.table})
	comment := userdata.AppendString(nil, userdata.TypeComment, "FTP control: inspect in ftpgate before it passes")
	tcp := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
	}
	// tcp flags & (fin | syn | rst) != 0 queue
	n.conn.AddRule(&nftables.Rule{Table: n.table, Chain: inspect, UserData: comment, Exprs: append(slices.Clone(tcp),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x07}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0}},
		queue,
	)})
	// Data: the packet is longer than its headers. nft cannot subtract
	// header lengths, so there is one rule per TCP data offset:
	//   meta nfproto ipv4 @th,96,4 == DOFF meta length > 20 + 4*DOFF queue
	// IP options or IPv6 extension headers only make a pure ACK look
	// longer, so they err on the side of inspecting.
	for _, fam := range []struct {
		proto byte
		iphdr uint32
	}{{unix.NFPROTO_IPV4, 20}, {unix.NFPROTO_IPV6, 40}} {
		for doff := uint32(5); doff <= 15; doff++ {
			n.conn.AddRule(&nftables.Rule{Table: n.table, Chain: inspect, UserData: comment, Exprs: append(slices.Clone(tcp),
				&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{fam.proto}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 12, Len: 1},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0xf0}, Xor: []byte{0}},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(doff << 4)}},
				&expr.Meta{Key: expr.MetaKeyLEN, Register: 1},
				&expr.Cmp{Op: expr.CmpOpGt, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, fam.iphdr+4*doff)},
				queue,
			)})
		}
	}
	for _, c := range chainHooks {
		chain := &nftables.Chain{Name: c.name, Table: n.table}
		for _, p := range ports {
			for _, off := range []uint32{0, 2} { // source port, destination port
				n.conn.AddRule(&nftables.Rule{
					Table: n.table,
					Chain: chain,
					Exprs: append(slices.Clone(tcp),
						&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2},
						&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, p)},
						&expr.Verdict{Kind: expr.VerdictJump, Chain: inspectChain},
					),
				})
			}
		}
	}
	return n.conn.Flush()
}
