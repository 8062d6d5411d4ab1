package rules

import (
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
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
func (n *Nftables) AddInlineRules(num, logGroup uint16, ports []uint16) (QueueMode, error) {
	nativeErr := n.addInlineRules(ports, logGroup, nftQueue(num))
	if nativeErr == nil {
		n.inline = &inlineParams{queue: nftQueue(num), logGroup: logGroup, ports: ports}
		return QueueNative, nil
	}
	if err := n.addInlineRules(ports, logGroup, xtQueue(num)); err != nil {
		// Either error may also be a rule the kernel is too old for
		// (@ih needs Linux 5.16): say both.
		return "", fmt.Errorf("%w: the kernel refused the inline rules with the nft queue statement (%v) and with the xtables NFQUEUE target (%v)", ErrNoNftables, nativeErr, err)
	}
	n.inline = &inlineParams{queue: xtQueue(num), logGroup: logGroup, ports: ports}
	return QueueXtables, nil
}

// inlineParams are what the inline rules were built with.
type inlineParams struct {
	queue    expr.Any
	logGroup uint16
	ports    []uint16
}

// SetControlPorts changes, in one transaction, the control ports whose
// traffic the inline rules copy and hold, and those the NAT rules hand
// to the control proxy (a reload):
//
//	nft flush chain inet ftpgate copy_ftp_control_forward
//	nft add rule inet ftpgate copy_ftp_control_forward tcp dport PORT jump inspect_ftp_control
//	(and the other copy chains; the proxy and detect chains with NAT)
func (n *Nftables) SetControlPorts(ports []uint16) error {
	if n.inline != nil {
		p := n.inlineRuleParams(ports)
		for _, c := range copyChains {
			chain := &nftables.Chain{Name: c.name, Table: n.table}
			n.conn.FlushChain(chain)
			for _, r := range copyChainRules(c, p, chain) {
				n.conn.AddRule(r)
			}
		}
	}
	if n.cfg.NAT != nil {
		n.cfg.NAT.Ports = ports
		p := n.params()
		for _, c := range []struct {
			name  string
			rules func(ruleParams, *nftables.Chain) []*nftables.Rule
		}{{natProxyChain, proxyRules}, {natDetectChain, detectRules}} {
			chain := &nftables.Chain{Name: c.name, Table: n.table}
			n.conn.FlushChain(chain)
			for _, r := range c.rules(p, chain) {
				n.conn.AddRule(r)
			}
		}
	}
	if err := n.conn.Flush(); err != nil {
		return fmt.Errorf("changing the control ports to %v: %w", ports, err)
	}
	if n.inline != nil {
		n.inline.ports = ports
	}
	return nil
}

// inlineRuleParams are the parameters of the inline rules.
func (n *Nftables) inlineRuleParams(ports []uint16) ruleParams {
	p := n.params()
	p.inline, p.queue, p.ports, p.logGroup = true, n.inline.queue, ports, n.inline.logGroup
	p.ifaces = n.ifaces
	return p
}

func (n *Nftables) addInlineRules(ports []uint16, logGroup uint16, queue expr.Any) error {
	n.queueInline(ports, logGroup, queue)
	return n.conn.Flush()
}

// queueInline queues the rules of inline capture (see AddInlineRules).
func (n *Nftables) queueInline(ports []uint16, logGroup uint16, queue expr.Any) {
	p := n.params()
	p.inline, p.queue, p.ports, p.logGroup = true, queue, ports, logGroup
	if len(n.cfg.Interfaces) > 0 {
		p.ifaces = &nftables.Set{ID: 11, Table: n.table, Name: InterfacesSet, KeyType: nftables.TypeIFName,
			Comment: "the interfaces whose FTP control traffic ftpgate copies and whose early data SYNs it holds (--interface)"}
		n.ifaces = p.ifaces
		elems := make([]nftables.SetElement, len(n.cfg.Interfaces))
		for i, name := range n.cfg.Interfaces {
			k := make([]byte, 16) // IFNAMSIZ, zero-padded
			copy(k, name)
			elems[i] = nftables.SetElement{Key: k}
		}
		_ = n.conn.AddSet(p.ifaces, elems)
	}
	inspect := n.conn.AddChain(&nftables.Chain{Name: inspectChain, Table: n.table})
	local := n.conn.AddChain(&nftables.Chain{Name: inspectLocalChain, Table: n.table})
	for _, r := range slices.Concat(inspectRules(false, p, inspect), inspectRules(true, p, local)) {
		n.conn.AddRule(r)
	}
	for _, c := range dataChains {
		chain := &nftables.Chain{Name: c.name, Table: n.table}
		n.conn.FlushChain(chain)
		for _, r := range dataChainRules(c, p, chain) {
			n.conn.AddRule(r)
		}
	}
	for _, c := range copyChains {
		chain := n.conn.AddChain(&nftables.Chain{
			Name: c.name, Table: n.table, Type: nftables.ChainTypeFilter,
			Hooknum: c.hook, Priority: nftables.ChainPriorityRef(nftables.ChainPriority(c.priority)),
		})
		for _, r := range copyChainRules(c, p, chain) {
			n.conn.AddRule(r)
		}
	}
}

// nftQueue is `queue num N bypass`.
func nftQueue(num uint16) expr.Any { return &expr.Queue{Num: num, Flag: expr.QueueFlagBypass} }

// xtQueue is the xtables `NFQUEUE --queue-num N --queue-bypass` target.
func xtQueue(num uint16) expr.Any {
	info := make([]byte, 8) // xt_NFQ_info_v3, host order, aligned to 8
	binary.NativeEndian.PutUint16(info[0:], num)
	binary.NativeEndian.PutUint16(info[2:], 1)
	binary.NativeEndian.PutUint16(info[4:], nfqFlagBypass)
	unknown := xt.Unknown(info)
	return &expr.Target{Name: "NFQUEUE", Rev: 3, Info: &unknown}
}
