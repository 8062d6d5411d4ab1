package rules

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// ForeignQueues lists the chains, outside ftpgate's tables (own and
// own+NATTableSuffix), with a rule that queues packets to userspace (the
// queue statement or the xtables NFQUEUE target): an inline IPS, say.
// Where the kernel shifts translated connections, every new control
// connection carries a userspace helper stub, and the kernel confirms a
// connection with such a helper as it reinjects a queued packet of it:
// a SYN queued by another program before source NAT would never get its
// NAT. ftpgate takes its own queues' packets' helper away; it cannot for
// other programs' queues, so with any ftpgate shifts itself.
//
//	nft list ruleset | grep -E 'queue|NFQUEUE'
func ForeignQueues(netns int, own string) ([]string, error) {
	conn, err := lastingConn(netns)
	if err != nil {
		return nil, err
	}
	defer conn.CloseLasting()
	chains, err := conn.ListChains()
	if err != nil {
		return nil, fmt.Errorf("listing chains: %w", err)
	}
	var out []string
	for _, ch := range chains {
		if ch.Table.Name == own || ch.Table.Name == own+NATTableSuffix {
			continue
		}
		rules, err := conn.GetRules(ch.Table, ch)
		if err != nil {
			return nil, fmt.Errorf("listing the rules of chain %s %s %s: %w", familyName(ch.Table.Family), ch.Table.Name, ch.Name, err)
		}
		for _, r := range rules {
			if queues(r) {
				out = append(out, fmt.Sprintf("%s %s %s", familyName(ch.Table.Family), ch.Table.Name, ch.Name))
				break
			}
		}
	}
	return out, nil
}

// lastingConn opens a lasting nftables connection in the network
// namespace netns (0: this one), with opts.
func lastingConn(netns int, opts ...nftables.ConnOption) (*nftables.Conn, error) {
	opts = append(opts, nftables.AsLasting())
	if netns != 0 {
		opts = append(opts, nftables.WithNetNSFd(netns))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: opening netlink socket: %v", ErrNoNftables, err)
	}
	return conn, nil
}

// queues says whether a rule queues packets to userspace.
func queues(r *nftables.Rule) bool {
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case *expr.Queue:
			return true
		case *expr.Target:
			if e.Name == "NFQUEUE" {
				return true
			}
		}
	}
	return false
}
