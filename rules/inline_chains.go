package rules

import (
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
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
// The copies are taken in chains of their own after the filter priority
// (copyChains), so that only segments the admin's ruleset let through are
// copied, and only those conntrack validated for an established
// connection whose source passes a reverse-path check (inspectRules).
// The marking chains gain the rules that admit a held SYN and that hold
// one (dataChainRules):
//
//	nft add chain inet ftpgate copy_ftp_control_forward { type filter hook forward priority filter + 50; }
//	nft add rule inet ftpgate copy_ftp_control_forward tcp dport 21 jump inspect_ftp_control
//	nft add rule inet ftpgate copy_ftp_control_forward tcp sport 21 jump inspect_ftp_control
//	nft add rule inet ftpgate inspect_ftp_control fib saddr . iif oif missing return
//	nft add rule inet ftpgate inspect_ftp_control tcp flags & (syn | ack) == syn ct state new queue num N bypass
//	nft add rule inet ftpgate inspect_ftp_control ct state != established return
//	nft add rule inet ftpgate inspect_ftp_control tcp flags & (fin | syn | rst) != 0 log group G accept
//	nft add rule inet ftpgate inspect_ftp_control @ih,0,8 & 0x0 == 0x0 log group G accept
//	nft add rule inet ftpgate mark_ftp_data_forward tcp flags & (syn | ack) == syn meta mark & MASK == MARK \
//	  ct mark set ct mark & ~MASK | MARK meta mark set meta mark & ~MASK counter accept
//	nft add rule inet ftpgate mark_ftp_data_forward ct state new ct mark & MASK != MARK \
//	  ip saddr . ip daddr @ftp_control_peers_v4 \
//	  log prefix "ftpgate: flush" group G snaplen 0 queue-threshold 1 queue num N bypass
//
// It tries the native queue statement first and falls back to the
// xtables target, and reports which one the running kernel took. With
// bypass, the kernel accepts the packets itself while no process listens
// on the queue: control connections still open if the daemon dies, and a
// held data SYN goes on to the admin's rules, which drop it.
func (c *chains) addInline(num, logGroup uint16, ports []uint16) (QueueMode, error) {
	nativeErr := c.addInlineRules(ports, logGroup, nftQueue(num))
	if nativeErr == nil {
		c.inline = &inlineParams{queue: nftQueue(num), logGroup: logGroup, ports: ports}
		return QueueNative, nil
	}
	if err := c.addInlineRules(ports, logGroup, xtQueue(num)); err != nil {
		// Either error may also be a rule the kernel is too old for
		// (@ih needs Linux 5.16): say both.
		return "", fmt.Errorf("%w: the kernel refused the inline rules with the nft queue statement (%v) and with the xtables NFQUEUE target (%v)", ErrNoNftables, nativeErr, err)
	}
	c.inline = &inlineParams{queue: xtQueue(num), logGroup: logGroup, ports: ports}
	return QueueXtables, nil
}

// inlineParams are what the inline rules were built with.
type inlineParams struct {
	queue    expr.Any
	logGroup uint16
	ports    []uint16
}

// setControlPorts changes, in one transaction, the control ports whose
// traffic the inline rules copy and hold, and those the NAT rules hand
// to the control proxy (a reload):
//
//	nft flush chain inet ftpgate copy_ftp_control_forward
//	nft add rule inet ftpgate copy_ftp_control_forward tcp dport PORT jump inspect_ftp_control
//	(and the other copy chains; the proxy and detect chains with NAT)
func (c *chains) setControlPorts(ports []uint16) error {
	if c.inline != nil {
		p := c.inlineRuleParams(ports)
		for _, h := range copyChains {
			c.replaceRules(h.name, func(ch *nftables.Chain) []*nftables.Rule { return copyChainRules(h, p, ch) })
		}
	}
	if c.cfg.NAT != nil {
		c.cfg.NAT.Ports = ports
		p := c.params()
		if !c.cfg.NAT.Packet {
			c.replaceRules(natProxyChain, func(ch *nftables.Chain) []*nftables.Rule { return proxyRules(p, ch) })
		}
		c.replaceRules(natDetectChain, func(ch *nftables.Chain) []*nftables.Rule { return detectRules(p, ch) })
	}
	if err := c.conn.Flush(); err != nil {
		return fmt.Errorf("changing the control ports to %v: %w", ports, err)
	}
	if c.inline != nil {
		c.inline.ports = ports
	}
	return nil
}

// inlineRuleParams are the parameters of the inline rules.
func (c *chains) inlineRuleParams(ports []uint16) ruleParams {
	p := c.params()
	p.inline, p.queue, p.ports, p.logGroup = true, c.inline.queue, ports, c.inline.logGroup
	p.ifaces = c.ifaces
	return p
}

func (c *chains) addInlineRules(ports []uint16, logGroup uint16, queue expr.Any) error {
	c.queueInline(ports, logGroup, queue)
	return c.conn.Flush()
}

// queueInline queues the rules of inline capture (see AddInlineRules):
// the interfaces set, the inspect chains, the marking chains' rules
// again, with those that admit and hold data SYNs, and the copy chains.
func (c *chains) queueInline(ports []uint16, logGroup uint16, queue expr.Any) {
	p := c.params()
	p.inline, p.queue, p.ports, p.logGroup = true, queue, ports, logGroup
	if len(c.cfg.Interfaces) > 0 {
		var elems []nftables.SetElement
		p.ifaces, elems = newInterfacesSet(c.table, c.cfg.Interfaces)
		c.ifaces = p.ifaces
		_ = c.conn.AddSet(p.ifaces, elems)
	}
	// Both chains before their rules: the messages stay in the order
	// the golden files hold.
	inspect := c.conn.AddChain(&nftables.Chain{Name: inspectChain, Table: c.table})
	local := c.conn.AddChain(&nftables.Chain{Name: inspectLocalChain, Table: c.table})
	for _, r := range slices.Concat(inspectRules(false, p, inspect), inspectRules(true, p, local)) {
		c.conn.AddRule(r)
	}
	for _, h := range dataChains {
		c.replaceRules(h.name, func(ch *nftables.Chain) []*nftables.Rule { return dataChainRules(h, p, ch) })
	}
	for _, h := range copyChains {
		c.addChain(h.chain(c.table), func(ch *nftables.Chain) []*nftables.Rule { return copyChainRules(h, p, ch) })
	}
	c.queuePacketPath(queue)
}

// nftQueue is `queue num N bypass`.
func nftQueue(num uint16) expr.Any { return &expr.Queue{Num: num, Flag: expr.QueueFlagBypass} }

// xtQueue is the xtables `NFQUEUE --queue-num N --queue-bypass` target.
func xtQueue(num uint16) expr.Any { return xtQueueFlags(num, nfqFlagBypass) }

func xtQueueFlags(num, flags uint16) expr.Any {
	info := make([]byte, 8) // xt_NFQ_info_v3, host order, aligned to 8
	binary.NativeEndian.PutUint16(info[0:], num)
	binary.NativeEndian.PutUint16(info[2:], 1)
	binary.NativeEndian.PutUint16(info[4:], flags)
	unknown := xt.Unknown(info)
	return &expr.Target{Name: "NFQUEUE", Rev: 3, Info: &unknown}
}

// natQueue is the packet path's queue, num, of the kind inline took,
// without bypass: `queue num N`, or `NFQUEUE --queue-num N`.
func natQueue(inline expr.Any, num uint16) expr.Any {
	if _, ok := inline.(*expr.Target); ok {
		return xtQueueFlags(num, 0)
	}
	return &expr.Queue{Num: num}
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
	if p.nat != nil && p.nat.cfg.Packet && c.hook == nftables.ChainHookForward {
		rules = append(rules, &nftables.Rule{Table: p.table, Chain: chain, UserData: comment("translated: the NAT packet path reads its segments"), Exprs: translatedSkipExprs()})
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
		rule("FTP control: carries data, copy to ftpgate", tcp(), carriesData(), copyToDaemon),
	)
}
