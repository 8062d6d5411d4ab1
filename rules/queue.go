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

// payloadBaseInnerHeader is NFT_PAYLOAD_INNER_HEADER (Linux 5.16): the
// bytes after the transport header, nft's @ih.
const payloadBaseInnerHeader expr.PayloadBase = 3

// AddInlineRules sets up inline capture: the kernel copies FTP control
// segments to the daemon through NFLOG group logGroup and holds, on queue
// num, the two kinds of packet that must wait for it:
//
//   - the SYN that opens a control connection, until the daemon has put
//     the session's peers in ftp_control_peers_v4/v6;
//   - a data connection's SYN between such peers that finds no pinhole
//     yet: its announcement is on the way through the daemon. The SYN is
//     first logged with a queue threshold of one, which makes the kernel
//     deliver every copy it was batching (LogReader.SetBatch), the
//     announcement among them. The daemon reads them all and, if the
//     SYN's pinhole is open, sends it through the chain again (NF_REPEAT)
//     with the mark on the packet, which the chain's first rule moves to
//     the connection; ftpgate closes the pinhole itself.
//
// Nothing else waits: a reply announcing a port goes on at once, so the
// control channel gains no latency, and a data SYN that arrives after its
// pinhole (the usual case) never leaves the kernel.
//
//	nft insert rule inet ftpgate mark_ftp_data_forward tcp flags & (syn | ack) == syn meta mark & MASK == MARK \
//	  ct mark set ct mark & ~MASK | MARK meta mark set meta mark & ~MASK counter accept
//	nft insert rule inet ftpgate mark_ftp_data_forward tcp flags & syn == 0 tcp sport != 21 tcp dport != 21 return
//	nft insert rule inet ftpgate mark_ftp_data_forward meta l4proto != tcp return
//	nft add rule inet ftpgate mark_ftp_data_forward tcp dport 21 jump inspect_ftp_control
//	nft add rule inet ftpgate mark_ftp_data_forward tcp sport 21 jump inspect_ftp_control
//	nft add rule inet ftpgate mark_ftp_data_forward tcp flags & (syn | ack) == syn ct state new \
//	  ct mark & MASK != MARK ip saddr . ip daddr @ftp_control_peers_v4 \
//	  log prefix "ftpgate: flush" group G snaplen 0 queue-threshold 1 queue num N bypass
//	nft add rule inet ftpgate inspect_ftp_control tcp flags & (syn | ack) == syn queue num N bypass
//	nft add rule inet ftpgate inspect_ftp_control tcp flags & (fin | syn | rst) != 0 log group G accept
//	nft add rule inet ftpgate inspect_ftp_control @ih,0,8 & 0x0 == 0x0 log group G accept
//
// It tries the native queue statement first and falls back to the
// xtables target, and reports which one the running kernel took. With
// bypass, the kernel accepts the packets itself while no process listens
// on the queue: control connections still open if the daemon dies, and a
// held data SYN goes on to the admin's rules, which drop it.
func (n *Nftables) AddInlineRules(num, logGroup uint16, ports []uint16) (QueueMode, error) {
	native := &expr.Queue{Num: num, Flag: expr.QueueFlagBypass}
	nativeErr := n.addInlineRules(ports, logGroup, native)
	if nativeErr == nil {
		return QueueNative, nil
	}
	info := make([]byte, 8) // xt_NFQ_info_v3, host order, aligned to 8
	binary.NativeEndian.PutUint16(info[0:], num)
	binary.NativeEndian.PutUint16(info[2:], 1)
	binary.NativeEndian.PutUint16(info[4:], nfqFlagBypass)
	unknown := xt.Unknown(info)
	compat := &expr.Target{Name: "NFQUEUE", Rev: 3, Info: &unknown}
	if err := n.addInlineRules(ports, logGroup, compat); err != nil {
		// Either error may also be a rule the kernel is too old for
		// (@ih needs Linux 5.16): say both.
		return "", fmt.Errorf("%w: the kernel refused the inline rules with the nft queue statement (%v) and with the xtables NFQUEUE target (%v)", ErrNoNftables, nativeErr, err)
	}
	return QueueXtables, nil
}

// inspectChain holds the rules that pick, among FTP control packets, those
// ftpgate must see: SYN, FIN and RST (sessions start and end) and every
// segment that carries data. Pure ACKs, a large share of control
// packets, are not copied.
const inspectChain = "inspect_ftp_control"

func (n *Nftables) addInlineRules(ports []uint16, logGroup uint16, queue expr.Any) error {
	inspect := n.conn.AddChain(&nftables.Chain{Name: inspectChain, Table: n.table})
	comment := func(s string) []byte { return userdata.AppendString(nil, userdata.TypeComment, s) }
	tcp := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
	}
	synOnly := []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x12}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x02}},
	}
	// log prefix "ftpgate: flush" group G snaplen 0 queue-threshold 1
	// Copies may wait in the kernel to be delivered in batches
	// (LogReader.SetBatch). A held data SYN must not: the announcement it
	// answers may be among them. Logging it with a threshold of one
	// delivers the batch before the SYN is queued.
	flush := &expr.Log{
		Key:        1<<unix.NFTA_LOG_PREFIX | 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_SNAPLEN | 1<<unix.NFTA_LOG_QTHRESHOLD,
		Data:       []byte(LogPrefixFlush),
		Group:      logGroup,
		Snaplen:    0,
		QThreshold: 1,
	}
	copyToDaemon := []expr.Any{
		&expr.Log{Key: 1 << unix.NFTA_LOG_GROUP, Group: logGroup},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}
	// tcp flags & (syn | ack) == syn queue
	n.conn.AddRule(&nftables.Rule{Table: n.table, Chain: inspect,
		UserData: comment("new FTP control connection: held until ftpgate knows its peers"),
		Exprs:    slices.Concat(tcp, synOnly, []expr.Any{queue})})
	// tcp flags & (fin | syn | rst) != 0 log group G accept
	copyComment := comment("FTP control: copy to ftpgate")
	n.conn.AddRule(&nftables.Rule{Table: n.table, Chain: inspect, UserData: copyComment, Exprs: slices.Concat(tcp,
		[]expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x07}, Xor: []byte{0}},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0}},
		}, copyToDaemon)})
	// @ih,0,8 & 0x0 == 0x0 log group G accept
	// Data: loading the first byte after the TCP header (nft's @ih, the
	// kernel's own header offsets, IP options and IPv6 extension headers
	// included) fails for a pure ACK, and the failed load ends the rule.
	// The masked compare is only there so that `nft list` can print it.
	n.conn.AddRule(&nftables.Rule{Table: n.table, Chain: inspect,
		UserData: comment("FTP control: carries data, copy to ftpgate"),
		Exprs: slices.Concat(tcp, []expr.Any{
			&expr.Payload{DestRegister: 1, Base: payloadBaseInnerHeader, Offset: 0, Len: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0}, Xor: []byte{0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0}},
		}, copyToDaemon)})
	ne := binary.NativeEndian.AppendUint32
	for _, c := range chainHooks {
		chain := &nftables.Chain{Name: c.name, Table: n.table}
		// tcp flags & (syn | ack) == syn meta mark & MASK == MARK \
		//   ct mark set ct mark & ~MASK | MARK meta mark set meta mark & ~MASK accept
		// A held data SYN that ftpgate admitted comes back through the
		// chain with the mark on the packet; it moves to the connection.
		// Only ftpgate sets these bits of the packet mark (see --mark).
		const markReg = 1
		n.conn.InsertRule(&nftables.Rule{Table: n.table, Chain: chain,
			UserData: comment("data SYN admitted by ftpgate after it waited: mark its connection"),
			Exprs: slices.Concat(tcp, synOnly, []expr.Any{
				&expr.Meta{Key: expr.MetaKeyMARK, Register: markReg},
				&expr.Bitwise{SourceRegister: markReg, DestRegister: markReg, Len: 4, Mask: ne(nil, n.cfg.MarkMask), Xor: ne(nil, 0)},
				&expr.Cmp{Op: expr.CmpOpEq, Register: markReg, Data: ne(nil, n.cfg.Mark)},
				&expr.Ct{Register: markReg, Key: expr.CtKeyMARK},
				&expr.Bitwise{SourceRegister: markReg, DestRegister: markReg, Len: 4, Mask: ne(nil, ^n.cfg.MarkMask), Xor: ne(nil, n.cfg.Mark)},
				&expr.Ct{Register: markReg, Key: expr.CtKeyMARK, SourceRegister: true},
				&expr.Meta{Key: expr.MetaKeyMARK, Register: markReg},
				&expr.Bitwise{SourceRegister: markReg, DestRegister: markReg, Len: 4, Mask: ne(nil, ^n.cfg.MarkMask), Xor: ne(nil, 0)},
				&expr.Meta{Key: expr.MetaKeyMARK, Register: markReg, SourceRegister: true},
				&expr.Counter{},
				&expr.Verdict{Kind: expr.VerdictAccept},
			})})
		// tcp flags & syn == 0 tcp sport != 21 tcp dport != 21 return
		// Inserted above everything: the bulk of a gateway's traffic, data
		// segments of established connections, then costs one rule here
		// instead of a walk through every rule below.
		bypass := slices.Concat(tcp, []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x02}, Xor: []byte{0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0}},
		})
		for _, p := range ports {
			for _, off := range []uint32{0, 2} {
				bypass = append(bypass,
					&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2},
					&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, p)})
			}
		}
		n.conn.InsertRule(&nftables.Rule{Table: n.table, Chain: chain,
			UserData: comment("not a SYN, not FTP control: nothing for ftpgate"),
			Exprs:    append(bypass, &expr.Verdict{Kind: expr.VerdictReturn})})
		// meta l4proto != tcp return
		n.conn.InsertRule(&nftables.Rule{Table: n.table, Chain: chain,
			UserData: comment("not TCP: nothing for ftpgate"),
			Exprs: []expr.Any{
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
				&expr.Verdict{Kind: expr.VerdictReturn},
			}})
		for _, p := range ports {
			for _, off := range []uint32{0, 2} { // source port, destination port
				n.conn.AddRule(&nftables.Rule{
					Table: n.table,
					Chain: chain,
					Exprs: slices.Concat(tcp, []expr.Any{
						&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2},
						&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, p)},
						&expr.Verdict{Kind: expr.VerdictJump, Chain: inspectChain},
					}),
				})
			}
		}
		for _, fam := range []struct {
			proto     byte
			off, alen uint32
			set       *nftables.Set
		}{{unix.NFPROTO_IPV4, 12, 4, n.peers4}, {unix.NFPROTO_IPV6, 8, 16, n.peers6}} {
			keyReg := uint32(8) // NFT_REG32_00
			n.conn.AddRule(&nftables.Rule{Table: n.table, Chain: chain,
				UserData: comment("data SYN between FTP peers without a pinhole yet: wait for ftpgate"),
				Exprs: slices.Concat(
					[]expr.Any{
						&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
						&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{fam.proto}},
					}, tcp, synOnly,
					[]expr.Any{
						&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
						&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: ne(nil, expr.CtStateBitNEW), Xor: ne(nil, 0)},
						&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ne(nil, 0)},
						&expr.Ct{Register: 1, Key: expr.CtKeyMARK},
						&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: ne(nil, n.cfg.MarkMask), Xor: ne(nil, 0)},
						&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ne(nil, n.cfg.Mark)},
						&expr.Payload{DestRegister: keyReg, Base: expr.PayloadBaseNetworkHeader, Offset: fam.off, Len: fam.alen},
						&expr.Payload{DestRegister: keyReg + fam.alen/4, Base: expr.PayloadBaseNetworkHeader, Offset: fam.off + fam.alen, Len: fam.alen},
						&expr.Lookup{SourceRegister: keyReg, SetName: fam.set.Name, SetID: fam.set.ID},
						flush,
						queue,
					}),
			})
		}
	}
	return n.conn.Flush()
}
