package rules

import (
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
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

// chain describes the base chain, of type filter.
//
//	nft add chain inet ftpgate NAME { type filter hook HOOK priority PRIORITY; }
func (h hookChain) chain(t *nftables.Table) *nftables.Chain {
	return baseChain(t, h.name, nftables.ChainTypeFilter, h.hook, h.priority)
}

func baseChain(t *nftables.Table, name string, typ nftables.ChainType, hook *nftables.ChainHook, prio int32) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: t, Type: typ, Hooknum: hook,
		Priority: nftables.ChainPriorityRef(nftables.ChainPriority(prio))}
}

// chains adds the table's chains and changes their rules, which the pure
// builders of mark_chains.go, inline_chains.go, confirm_chains.go and
// nat_chains.go make from the configuration and the sets.
type chains struct {
	conn  *nftables.Conn
	table *nftables.Table
	// kept is the NAT packet path's table of shifted connections, which
	// outlives ftpgate (nil without the packet path; see keptTable).
	kept *keptTable
	cfg  *Config
	sets *tableSets
	// Inline capture: what its rules were built with, and the interfaces set.
	inline *inlineParams
	ifaces *nftables.Set
}

func (c *chains) params() ruleParams { return newRuleParams(c.table, c.cfg, c.sets) }

// addChain queues a chain and the rules that rules builds for it.
func (c *chains) addChain(ch *nftables.Chain, rules func(*nftables.Chain) []*nftables.Rule) {
	ch = c.conn.AddChain(ch)
	for _, r := range rules(ch) {
		c.conn.AddRule(r)
	}
}

// replaceRules queues the replacement of a chain's rules, in the same
// batch, so that no packet sees the chain empty.
//
//	nft flush chain inet ftpgate NAME
//	nft add rule inet ftpgate NAME ...
func (c *chains) replaceRules(name string, rules func(*nftables.Chain) []*nftables.Rule) {
	ch := &nftables.Chain{Name: name, Table: c.table}
	c.conn.FlushChain(ch)
	for _, r := range rules(ch) {
		c.conn.AddRule(r)
	}
}

// queueMarkChains queues the chains that mark data connections, with
// their base rules (dataChainRules).
//
//	nft add chain inet ftpgate mark_ftp_data_forward { type filter hook forward priority filter - 10; }
//	...
func (c *chains) queueMarkChains() {
	for _, h := range dataChains {
		c.addChain(h.chain(c.table), func(ch *nftables.Chain) []*nftables.Rule { return dataChainRules(h, c.params(), ch) })
	}
}

// queueConfirm queues the confirm chains (only with a log group: the
// reports need somewhere to go).
//
//	nft add chain inet ftpgate confirm_ftp_data_forward { type filter hook forward priority filter + 45; }
//	...
func (c *chains) queueConfirm() {
	if c.cfg.LogGroup == 0 {
		return
	}
	for _, h := range confirmChains {
		c.addChain(h.chain(c.table), func(ch *nftables.Chain) []*nftables.Rule { return confirmRules(c.params(), ch) })
	}
}

// queueScopedDNAT queues, with NAT, the chain that maps FTPS data
// connections through a port forward (scopedDNATRules).
//
//	nft add chain inet ftpgate nat_ftps_data_dnat { type nat hook prerouting priority dstnat - 1; }
func (c *chains) queueScopedDNAT() {
	if c.sets.scoped.dnat.v4 == nil {
		return
	}
	c.addChain(baseChain(c.table, "nat_ftps_data_dnat", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, DNATChainPriority),
		func(ch *nftables.Chain) []*nftables.Rule { return scopedDNATRules(c.params(), ch) })
}

// queueNAT queues the NAT chains (see NATConfig).
//
//	nft add chain inet ftpgate nat_ftp_data_dnat { type nat hook prerouting priority dstnat - 1; }
//	nft add chain inet ftpgate nat_ftp_data_snat { type nat hook postrouting priority srcnat - 1; }
//	nft add chain inet ftpgate proxy_ftp_control { type filter hook prerouting priority dstnat + 1; }
//	nft add chain inet ftpgate detect_translated_ftp_control { type filter hook postrouting priority srcnat + 1; }
func (c *chains) queueNAT() {
	p := c.params()
	with := func(rules func(ruleParams, *nftables.Chain) []*nftables.Rule) func(*nftables.Chain) []*nftables.Rule {
		return func(ch *nftables.Chain) []*nftables.Rule { return rules(p, ch) }
	}
	c.addChain(baseChain(c.table, "nat_ftp_data_dnat", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, DNATChainPriority), with(natRules(false)))
	c.addChain(baseChain(c.table, "nat_ftp_data_snat", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, SNATChainPriority), with(natRules(true)))
	if !c.cfg.NAT.Packet {
		c.addChain(baseChain(c.table, natProxyChain, nftables.ChainTypeFilter, nftables.ChainHookPrerouting, ProxyChainPriority), with(proxyRules))
	}
	c.addChain(baseChain(c.table, natDetectChain, nftables.ChainTypeFilter, nftables.ChainHookPostrouting, DetectChainPriority), with(detectRules))
	if c.cfg.NAT.Packet && c.cfg.NAT.KernelShifts {
		c.conn.AddObj(helperObject(c.table, c.cfg.NAT.HelperStub))
		c.addChain(baseChain(c.table, natHelperChain, nftables.ChainTypeFilter, nftables.ChainHookPrerouting, HelperChainPriority), with(kernelShiftHelperRules))
	}
}

// queuePacketPath queues, in the NAT packet path, the chains that queue
// translated control connections' segments (packetQueueRules) and check
// their replies' sources (replyCheckRules), with the kind of queue the
// inline rules took (native or xtables); and adopts the table of shifted
// connections a previous ftpgate left (keptTable).
//
//	nft add chain inet ftpgate queue_translated_ftp_control_from_client { type filter hook prerouting priority -250; }
//	nft add chain inet ftpgate queue_translated_ftp_control_from_server { type filter hook postrouting priority srcnat + 2; }
//	nft add chain inet ftpgate check_translated_ftp_control_replies { type filter hook prerouting priority mangle; }
func (c *chains) queuePacketPath(inlineQueue expr.Any) {
	if c.kept == nil {
		return
	}
	c.kept.queue = natQueue(inlineQueue, c.cfg.NAT.Queue)
	if c.cfg.NAT.KernelShifts {
		c.queueKernelShiftChains()
	} else {
		c.queueTranslatedChains(c.table, c.sets.nat.translated)
	}
	if c.kept.table != nil {
		c.kept.adopt(c)
	}
}

// queueKernelShiftChains queues, with KernelShifts, the owned table's
// chains that queue translated control connections' segments, IPv4 ones
// for the kernel to shift (kernelShiftQueueRules), IPv6 ones for
// ftpgate (packetQueueRules), and check their replies' sources.
//
//	nft add chain inet ftpgate queue_translated_ftp_control_from_client_kernel_shifts { type filter hook prerouting priority -150; }
//	nft add chain inet ftpgate queue_translated_ftp_control_from_client { type filter hook prerouting priority -250; }
//	nft add chain inet ftpgate queue_translated_ftp_control_from_server { type filter hook postrouting priority srcnat + 2; }
//	nft add chain inet ftpgate check_translated_ftp_control_replies { type filter hook prerouting priority mangle; }
func (c *chains) queueKernelShiftChains() {
	p, sets, q := c.params(), c.sets.nat.translated, c.kept.queue
	c.addChain(baseChain(c.table, natFromClientKernelChain, nftables.ChainTypeFilter, nftables.ChainHookPrerouting, FromClientKernelQueuePriority),
		func(ch *nftables.Chain) []*nftables.Rule { return kernelShiftQueueRules(false, sets, q)(p, ch) })
	c.addChain(baseChain(c.table, natFromClientChain, nftables.ChainTypeFilter, nftables.ChainHookPrerouting, FromClientQueuePriority),
		func(ch *nftables.Chain) []*nftables.Rule {
			return familiesQueueRules(false, sets, q, []bool{true})(p, ch)
		})
	c.addChain(baseChain(c.table, natFromServerChain, nftables.ChainTypeFilter, nftables.ChainHookPostrouting, FromServerQueuePriority),
		func(ch *nftables.Chain) []*nftables.Rule {
			return slices.Concat(kernelShiftQueueRules(true, sets, q)(p, ch), familiesQueueRules(true, sets, q, []bool{true})(p, ch))
		})
	c.addChain(baseChain(c.table, natReplyCheckChain, nftables.ChainTypeFilter, nftables.ChainHookPrerouting, ReplyCheckPriority),
		func(ch *nftables.Chain) []*nftables.Rule { return replyCheckRules(sets)(p, ch) })
}

// queueTranslatedChains queues the three chains of a set pair of
// translated connections in table t.
func (c *chains) queueTranslatedChains(t *nftables.Table, sets setPair) {
	p := c.params()
	for _, h := range []struct {
		name       string
		hook       *nftables.ChainHook
		prio       int32
		fromServer bool
	}{
		{natFromClientChain, nftables.ChainHookPrerouting, FromClientQueuePriority, false},
		{natFromServerChain, nftables.ChainHookPostrouting, FromServerQueuePriority, true},
	} {
		rules := packetQueueRules(h.fromServer, sets, c.kept.queue)
		c.addChain(baseChain(t, h.name, nftables.ChainTypeFilter, h.hook, h.prio),
			func(ch *nftables.Chain) []*nftables.Rule { return rules(p, ch) })
	}
	c.addChain(baseChain(t, natReplyCheckChain, nftables.ChainTypeFilter, nftables.ChainHookPrerouting, ReplyCheckPriority),
		func(ch *nftables.Chain) []*nftables.Rule { return replyCheckRules(sets)(p, ch) })
}
