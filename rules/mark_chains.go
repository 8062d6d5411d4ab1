package rules

import (
	"encoding/binary"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// hookChain is one of ftpgate's base chains.
type hookChain struct {
	name     string
	hook     *nftables.ChainHook
	priority int32
	// local: the output hook, for packets this host sends, which have no
	// input interface to check their source against.
	local bool
}

// The chains that mark data connections run just before the default
// filter priority, so that the mark is set before the admin's own rules
// test it, and a held data SYN is held before they drop it.
var dataChains = []hookChain{
	{"mark_ftp_data_forward", nftables.ChainHookForward, ChainPriority, false},
	{"mark_ftp_data_input", nftables.ChainHookInput, ChainPriority, false},
	{"mark_ftp_data_output", nftables.ChainHookOutput, ChainPriority, true},
}

// The chains that copy control segments (inline capture) run after the
// filter priority: a segment the admin's ruleset drops (ct state invalid
// drop, anything) never reaches its receiver, so ftpgate must not see it
// either.
var copyChains = []hookChain{
	{"copy_ftp_control_forward", nftables.ChainHookForward, CopyChainPriority, false},
	{"copy_ftp_control_input", nftables.ChainHookInput, CopyChainPriority, false},
	{"copy_ftp_control_output", nftables.ChainHookOutput, CopyChainPriority, true},
}

// ChainPriority is the priority of ftpgate's marking chains: "filter - 10".
const ChainPriority = -10

// CopyChainPriority is the priority of the inline copy chains: "filter +
// 40", after the filter chains of admins (0), firewalld (+10) and
// iptables-nft (0), and before SELinux's security chains (50) and the
// source NAT of the input hook (100).
const CopyChainPriority = 40

// Inspect chains pick, among FTP control packets, those ftpgate must
// see: SYN, FIN and RST (sessions start and end) and every segment that
// carries data. Pure ACKs, a large share of control packets, are not
// copied. The local one serves the output hook.
const (
	inspectChain      = "inspect_ftp_control"
	inspectLocalChain = "inspect_ftp_control_local"
)

// ruleParams is what the rules are built from.
type ruleParams struct {
	table          *nftables.Table
	mark, mask     uint32
	logGroup       uint16 // 0: no reports of used pinholes
	set4, set6     *nftables.Set
	peers4, peers6 *nftables.Set
	// FTPS scoped ranges (nil in tests that build no such sets).
	scoped4, scoped6, active4, active6 *nftables.Set
	// Inline capture only:
	inline bool
	queue  expr.Any // the queue statement or target
	ports  []uint16
	// NAT only:
	nat *natParams
	// ifaces, if set, scopes inline capture to the interfaces in it.
	ifaces *nftables.Set
}

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

// dataChainRules are the rules of a chain that marks data connections,
// in order:
//
//	meta l4proto != tcp return
//	tcp flags & (syn | ack) != syn return
//	tcp flags & (syn | ack) == syn meta mark & MASK == MARK ct mark set ... accept  # inline
//	fib saddr . iif oif missing return                                         # not output
//	(consume rule, IPv4 and IPv6)
//	(hold rule, IPv4 and IPv6)                                                 # inline
//
// Everything but a SYN leaves at the second rule, so the bulk of a
// gateway's traffic costs ftpgate two rules.
func dataChainRules(c hookChain, p ruleParams, chain *nftables.Chain) []*nftables.Rule {
	rule := func(note string, exprs ...[]expr.Any) *nftables.Rule {
		return &nftables.Rule{Table: p.table, Chain: chain, UserData: comment(note), Exprs: slices.Concat(exprs...)}
	}
	rules := []*nftables.Rule{
		rule("not TCP: nothing for ftpgate", []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
			ret,
		}),
		rule("not a SYN: nothing for ftpgate", tcpFlags(0x12, 0x02, expr.CmpOpNeq), []expr.Any{ret}),
	}
	if p.inline {
		rules = append(rules, rule("data SYN admitted by ftpgate after it waited: mark its connection", admittedExprs(p)))
	}
	if !c.local {
		rules = append(rules, rule("source not routed back through the interface it came in on: forged", reversePathFails(), []expr.Any{ret}))
	}
	if p.nat != nil && c.hook == nftables.ChainHookInput {
		rules = append(rules, rule("FTP control connection handed to ftpgate's control proxy: let it in", proxyAdmitExprs(p)))
	}
	rules = append(rules,
		rule("first packet of an announced FTP data connection: mark it, close the pinhole", consumeExprs(p, false)),
		rule("first packet of an announced FTP data connection: mark it, close the pinhole", consumeExprs(p, true)))
	if p.scoped4 != nil {
		for _, v6 := range []bool{false, true} {
			rules = append(rules,
				rule("data connection of an encrypted FTP session (FTPS): within its scoped range", scopedExprs(p, v6, false)),
				rule("active-mode data connection of an implicit FTPS session: within its scope", scopedExprs(p, v6, true)))
		}
	}
	if p.inline {
		if p.ifaces != nil {
			rules = append(rules, rule("not on an interface ftpgate watches: not held", outOfScope(c, p)))
		}
		rules = append(rules,
			rule("data SYN between FTP peers without a pinhole yet: wait for ftpgate", holdExprs(p, false)),
			rule("data SYN between FTP peers without a pinhole yet: wait for ftpgate", holdExprs(p, true)))
	}
	return rules
}

// admittedExprs:
//
//	meta mark & MASK == MARK ct mark set ct mark & ~MASK | MARK
//	  meta mark set meta mark & ~MASK counter accept
//
// A held data SYN that ftpgate admitted comes back through the chain with
// the mark on the packet; it moves to the connection. Only ftpgate sets
// these bits of the packet mark (see --mark).
func admittedExprs(p ruleParams) []expr.Any {
	return slices.Concat(
		markIs(&expr.Meta{Key: expr.MetaKeyMARK, Register: 1}, p.mask, p.mark, expr.CmpOpEq),
		[]expr.Any{
			&expr.Ct{Register: 1, Key: expr.CtKeyMARK},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: ne32(^p.mask), Xor: ne32(p.mark)},
			&expr.Ct{Register: 1, Key: expr.CtKeyMARK, SourceRegister: true},
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: ne32(^p.mask), Xor: ne32(0)},
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1, SourceRegister: true},
			&expr.Counter{},
			accept,
		})
}

// consumeExprs builds, for one address family:
//
//	meta nfproto ipv4 ct state new \
//	  ip saddr . ip daddr . tcp dport @SET \
//	  ct mark set ct mark & ~MASK | MARK \
//	  delete @SET { ip saddr . ip daddr . tcp dport } counter \
//	  log prefix "ftpgate: pinhole used" group LOGGROUP snaplen 128 accept
//
// The lookup runs in the packet path and takes the element's one token
// (see pinholeLimitRate): of any number of SYNs, on any number of CPUs,
// one passes. The ct mark then carries retransmitted SYNs of that very
// connection past the admin's ruleset. The accept ends only ftpgate's
// chain; the admin's chain still decides, by the mark.
func consumeExprs(p ruleParams, v6 bool) []expr.Any {
	set := p.set4
	alen := uint32(4)
	if v6 {
		set, alen = p.set6, 16
	}
	portReg := keyReg + 2*alen/4
	// NFT_REG_4 (32-bit registers 20-23) lies past the longest key (IPv6:
	// registers 8-16); NFT_REG_1 would overlap the key and corrupt it.
	const markReg = 4
	exprs := slices.Concat(nfproto(v6), ctState(expr.CtStateBitNEW, expr.CmpOpNeq), addrPair(v6), []expr.Any{
		&expr.Payload{DestRegister: portReg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: keyReg, SetName: set.Name, SetID: set.ID},
		&expr.Ct{Register: markReg, Key: expr.CtKeyMARK},
		&expr.Bitwise{SourceRegister: markReg, DestRegister: markReg, Len: 4, Mask: ne32(^p.mask), Xor: ne32(p.mark)},
		&expr.Ct{Register: markReg, Key: expr.CtKeyMARK, SourceRegister: true},
		&expr.Dynset{SrcRegKey: keyReg, SetName: set.Name, SetID: set.ID, Operation: dynsetOpDelete},
		&expr.Counter{},
	})
	if p.logGroup != 0 {
		exprs = append(exprs, &expr.Log{
			Key:     1<<unix.NFTA_LOG_PREFIX | 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_SNAPLEN,
			Data:    []byte(LogPrefixUsed),
			Group:   p.logGroup,
			Snaplen: consumedSnaplen,
		})
	}
	return append(exprs, accept)
}

// holdExprs:
//
//	meta nfproto ipv4 ct state new ct mark & MASK != MARK \
//	  ip saddr . ip daddr @ftp_control_peers_v4 \
//	  log prefix "ftpgate: flush" group G snaplen 0 queue-threshold 1 \
//	  queue num N bypass
//
// A data SYN between the hosts of a control session that found no
// pinhole: its announcement may still be on the way through ftpgate.
// Copies may wait in the kernel to be delivered in batches
// (LogReader.SetBatch); logging the SYN with a threshold of one delivers
// the batch, the announcement among them, before the SYN is queued.
func holdExprs(p ruleParams, v6 bool) []expr.Any {
	set := p.peers4
	if v6 {
		set = p.peers6
	}
	flush := &expr.Log{
		Key:        1<<unix.NFTA_LOG_PREFIX | 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_SNAPLEN | 1<<unix.NFTA_LOG_QTHRESHOLD,
		Data:       []byte(LogPrefixFlush),
		Group:      p.logGroup,
		Snaplen:    0,
		QThreshold: 1,
	}
	return slices.Concat(nfproto(v6), ctState(expr.CtStateBitNEW, expr.CmpOpNeq),
		markIs(&expr.Ct{Register: 1, Key: expr.CtKeyMARK}, p.mask, p.mark, expr.CmpOpNeq),
		addrPair(v6), []expr.Any{
			&expr.Lookup{SourceRegister: keyReg, SetName: set.Name, SetID: set.ID},
			flush,
			p.queue,
		})
}

// outOfScope returns for packets on no interface ftpgate watches:
//
//	iifname != @ftp_interfaces oifname != @ftp_interfaces return   # forward
//	iifname != @ftp_interfaces return                              # input
//	oifname != @ftp_interfaces return                              # output
func outOfScope(c hookChain, p ruleParams) []expr.Any {
	not := func(key expr.MetaKey) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: key, Register: 1},
			&expr.Lookup{SourceRegister: 1, SetName: p.ifaces.Name, SetID: p.ifaces.ID, Invert: true},
		}
	}
	var e []expr.Any
	if c.hook != nftables.ChainHookOutput {
		e = append(e, not(expr.MetaKeyIIFNAME)...)
	}
	if c.hook != nftables.ChainHookInput {
		e = append(e, not(expr.MetaKeyOIFNAME)...)
	}
	return append(e, ret)
}

// copyChainRules send FTP control traffic to the inspect chain:
//
//	tcp dport PORT jump inspect_ftp_control   (and tcp sport PORT, per port)
func copyChainRules(c hookChain, p ruleParams, chain *nftables.Chain) []*nftables.Rule {
	target := inspectChain
	if c.local {
		target = inspectLocalChain
	}
	var rules []*nftables.Rule
	if p.ifaces != nil {
		rules = append(rules, &nftables.Rule{Table: p.table, Chain: chain, UserData: comment("not on an interface ftpgate watches: not copied"), Exprs: outOfScope(c, p)})
	}
	if p.nat != nil && c.hook != nftables.ChainHookForward {
		rules = append(rules, &nftables.Rule{Table: p.table, Chain: chain, Exprs: proxiedSkipExprs(p)})
	}
	for _, port := range p.ports {
		for _, off := range []uint32{2, 0} { // destination port, source port
			rules = append(rules, &nftables.Rule{Table: p.table, Chain: chain, Exprs: slices.Concat(tcp(), []expr.Any{
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
				&expr.Verdict{Kind: expr.VerdictJump, Chain: target},
			})})
		}
	}
	return rules
}

// inspectRules pick the control packets ftpgate must see:
//
//	fib saddr . iif oif missing return                   # not the local chain
//	tcp flags & (syn | ack) == syn ct state new queue num N bypass
//	ct state & established == 0 return
//	tcp flags & (fin | syn | rst) != 0 log group G accept
//	@ih,0,8 & 0x0 == 0x0 log group G accept
//
// Only segments the kernel's conntrack has validated for an established
// connection are copied: a wrong checksum or a sequence number outside
// the window makes a segment invalid there. A forged source address
// fails the reverse-path check.
func inspectRules(local bool, p ruleParams, chain *nftables.Chain) []*nftables.Rule {
	rule := func(note string, exprs ...[]expr.Any) *nftables.Rule {
		return &nftables.Rule{Table: p.table, Chain: chain, UserData: comment(note), Exprs: slices.Concat(exprs...)}
	}
	copyToDaemon := []expr.Any{&expr.Log{Key: 1 << unix.NFTA_LOG_GROUP, Group: p.logGroup}, accept}
	var rules []*nftables.Rule
	if !local {
		rules = append(rules, rule("source not routed back through the interface it came in on: forged, not copied",
			reversePathFails(), []expr.Any{ret}))
	}
	return append(rules,
		rule("new FTP control connection: held until ftpgate knows its peers",
			tcp(), synOnly(), ctState(expr.CtStateBitNEW, expr.CmpOpNeq), []expr.Any{p.queue}),
		rule("not validated by conntrack for an established connection: not copied",
			ctState(expr.CtStateBitESTABLISHED, expr.CmpOpEq), []expr.Any{ret}),
		rule("FTP control: copy to ftpgate", tcp(), tcpFlags(0x07, 0, expr.CmpOpNeq), copyToDaemon),
		// Loading the first byte after the TCP header (nft's @ih, the
		// kernel's own header offsets, IP options and IPv6 extension
		// headers included) fails for a pure ACK, and the failed load
		// ends the rule. The masked compare is only there so that `nft
		// list` can print it.
		rule("FTP control: carries data, copy to ftpgate", tcp(), []expr.Any{
			&expr.Payload{DestRegister: 1, Base: payloadBaseInnerHeader, Offset: 0, Len: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0}, Xor: []byte{0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0}},
		}, copyToDaemon),
	)
}

// payloadBaseInnerHeader is NFT_PAYLOAD_INNER_HEADER (Linux 5.16): the
// bytes after the transport header, nft's @ih.
const payloadBaseInnerHeader expr.PayloadBase = 3

// dynsetOpDelete is NFT_DYNSET_OP_DELETE (Linux 5.14).
const dynsetOpDelete = 2
