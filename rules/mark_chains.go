package rules

import (
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The chains that mark data connections run just before the default
// filter priority, so that the mark is set before the admin's own rules
// test it, and a held data SYN is held before they drop it.
var dataChains = []hookChain{
	{"mark_ftp_data_forward", nftables.ChainHookForward, ChainPriority, false},
	{"mark_ftp_data_input", nftables.ChainHookInput, ChainPriority, false},
	{"mark_ftp_data_output", nftables.ChainHookOutput, ChainPriority, true},
}

// ChainPriority is the priority of ftpgate's marking chains: "filter - 10".
const ChainPriority = -10

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
	if p.scoped.ranges.v4 != nil {
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
	set, alen := p.pinholes.of(v6), uint32(4)
	if v6 {
		alen = 16
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
	set := p.peers.of(v6)
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

// scopedExprs admit a new connection within an FTPS session's scope:
//
//	meta nfproto ipv4 ct state new ip saddr . ip daddr . tcp dport @ftps_ranges_v4 \
//	  ct mark set ct mark & ~MASK | MARK counter accept
//	meta nfproto ipv4 ct state new tcp sport 989 ip saddr . ip daddr . tcp dport @ftps_active_v4 \
//	  ct mark set ct mark & ~MASK | MARK counter accept
//
// Unlike a pinhole, the element is not consumed: a session opens a data
// connection per transfer, and the element goes when the session ends.
// Active mode is matched on both ports: from implicit FTPS's data port,
// to the client's configured active range, never to any port of it.
func scopedExprs(p ruleParams, v6, active bool) []expr.Any {
	set, alen := p.scoped.ranges.of(v6), uint32(4)
	if active {
		set = p.scoped.active.of(v6)
	}
	if v6 {
		alen = 16
	}
	var from989 []expr.Any
	if active {
		from989 = portIs(0, ftpsDataPort)
	}
	const markReg = 4
	return slices.Concat(nfproto(v6), ctState(expr.CtStateBitNEW, expr.CmpOpNeq), from989, addrPair(v6), []expr.Any{
		&expr.Payload{DestRegister: keyReg + 2*alen/4, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: keyReg, SetName: set.Name, SetID: set.ID},
		&expr.Ct{Register: markReg, Key: expr.CtKeyMARK},
		&expr.Bitwise{SourceRegister: markReg, DestRegister: markReg, Len: 4, Mask: ne32(^p.mask), Xor: ne32(p.mark)},
		&expr.Ct{Register: markReg, Key: expr.CtKeyMARK, SourceRegister: true},
		&expr.Counter{},
		accept,
	})
}
