package rules

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// RulesetProblem is a filter chain of the admin's that would drop what
// ftpgate admits.
type RulesetProblem struct {
	Family string // inet, ip, ip6
	Table  string
	Chain  string
	Hook   string // forward, input
	Drop   string // "policy drop" or "a rule drops all that reaches it"
}

func (p RulesetProblem) String() string {
	return fmt.Sprintf("chain %s %s %s (hook %s, %s) has no rule accepting the ftpgate mark before it drops", p.Family, p.Table, p.Chain, p.Hook, p.Drop)
}

// checkRuleset reads the ruleset and returns the filter chains on the
// forward and input hooks that drop (by policy, or by a rule that drops
// whatever reaches it) without first accepting connections whose ct mark carries
// ftpgate's mark: there, every data connection ftpgate admits is dropped.
// A rule counts as accepting the mark if it compares the ct mark, masked
// by bits that include ftpgate's, with ftpgate's value, and accepts;
// jumps and gotos are followed. ftpgate's own table is skipped.
//
//	nft list ruleset
func checkRuleset(conn *nftables.Conn, own string, mark, mask uint32) ([]RulesetProblem, error) {
	chains, err := conn.ListChains()
	if err != nil {
		return nil, fmt.Errorf("listing chains: %w", err)
	}
	c := &rulesetCheck{conn: conn, mark: mark, mask: mask, byName: map[string]*nftables.Chain{}, rulesOf: map[string][]*nftables.Rule{}}
	for _, ch := range chains {
		c.byName[chainKey(ch.Table, ch.Name)] = ch
	}
	var out []RulesetProblem
	for _, ch := range chains {
		if ch.Table.Name == own {
			continue
		}
		p, err := c.problem(ch)
		if err != nil {
			return nil, err
		}
		if p != nil {
			out = append(out, *p)
		}
	}
	return out, nil
}

// rulesetCheck walks the admin's chains, reading each chain's rules once.
type rulesetCheck struct {
	conn       *nftables.Conn
	mark, mask uint32
	byName     map[string]*nftables.Chain
	rulesOf    map[string][]*nftables.Rule
}

// problem returns the problem of a filter chain on the forward or input
// hook that drops without first accepting the mark, nil for any other.
func (c *rulesetCheck) problem(ch *nftables.Chain) (*RulesetProblem, error) {
	if ch.Hooknum == nil || ch.Type != nftables.ChainTypeFilter {
		return nil, nil
	}
	hook := ""
	switch *ch.Hooknum {
	case *nftables.ChainHookForward:
		hook = "forward"
	case *nftables.ChainHookInput:
		hook = "input"
	default:
		return nil, nil
	}
	fam := familyName(ch.Table.Family)
	if fam == "" {
		return nil, nil
	}
	rules, err := c.rules(ch)
	if err != nil {
		return nil, err
	}
	drop := drops(ch, rules)
	if drop == "" {
		return nil, nil
	}
	ok, err := c.acceptsMark(ch, rules, map[string]bool{})
	if err != nil || ok {
		return nil, err
	}
	return &RulesetProblem{Family: fam, Table: ch.Table.Name, Chain: ch.Name, Hook: hook, Drop: drop}, nil
}

// rules reads a chain's rules, once.
func (c *rulesetCheck) rules(ch *nftables.Chain) ([]*nftables.Rule, error) {
	k := chainKey(ch.Table, ch.Name)
	if r, ok := c.rulesOf[k]; ok {
		return r, nil
	}
	r, err := c.conn.GetRules(ch.Table, ch)
	if err != nil {
		return nil, fmt.Errorf("listing the rules of chain %s: %w", ch.Name, err)
	}
	c.rulesOf[k] = r
	return r, nil
}

// drops says how a chain drops what reaches its end, or "" if it does not.
func drops(ch *nftables.Chain, rules []*nftables.Rule) string {
	if ch.Policy != nil && *ch.Policy == nftables.ChainPolicyDrop {
		return "policy drop"
	}
	for _, r := range rules {
		if dropsAlways(r) {
			return "a rule drops all that reaches it"
		}
	}
	return ""
}

func chainKey(t *nftables.Table, name string) string {
	return fmt.Sprintf("%d/%s/%s", t.Family, t.Name, name)
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	}
	return ""
}

// acceptsMark walks a chain's rules in order until an unconditional
// drop, into the chains they jump or go to.
func (c *rulesetCheck) acceptsMark(ch *nftables.Chain, rules []*nftables.Rule, seen map[string]bool) (bool, error) {
	seen[chainKey(ch.Table, ch.Name)] = true
	for _, r := range rules {
		if acceptsMarkRule(r, c.mark, c.mask) {
			return true, nil
		}
		if dropsAlways(r) {
			return false, nil
		}
		for _, e := range r.Exprs {
			v, ok := e.(*expr.Verdict)
			if !ok || (v.Kind != expr.VerdictJump && v.Kind != expr.VerdictGoto) {
				continue
			}
			target := c.byName[chainKey(ch.Table, v.Chain)]
			if target == nil || seen[chainKey(ch.Table, v.Chain)] {
				continue
			}
			sub, err := c.rules(target)
			if err != nil {
				return false, err
			}
			if ok, err := c.acceptsMark(target, sub, seen); ok || err != nil {
				return ok, err
			}
		}
	}
	return false, nil
}

// acceptsMarkRule: ct mark [& MASK] == VALUE ... accept, where the
// compared bits include ftpgate's mask and the value has ftpgate's bits.
func acceptsMarkRule(r *nftables.Rule, mark, mask uint32) bool {
	loaded, cmpMask := false, uint32(0xffffffff)
	matched := false
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case *expr.Ct:
			if e.Key == expr.CtKeyMARK && !e.SourceRegister {
				loaded, cmpMask = true, 0xffffffff
			}
		case *expr.Bitwise:
			if loaded && len(e.Mask) == 4 {
				cmpMask &= binary.NativeEndian.Uint32(e.Mask)
			}
		case *expr.Cmp:
			if loaded && len(e.Data) == 4 {
				v := binary.NativeEndian.Uint32(e.Data)
				switch {
				case e.Op == expr.CmpOpEq && cmpMask&mask == mask && v&mask == mark:
					matched = true
				case e.Op == expr.CmpOpNeq && cmpMask&mask == mask && v == 0 && cmpMask == mask:
					matched = true // ct mark & MASK != 0, with a one-bit mask
				}
			}
			loaded = false
		case *expr.Verdict:
			return matched && e.Kind == expr.VerdictAccept
		}
	}
	return false
}

// dropsAlways reports whether a rule drops whatever reaches it: only
// counters and a drop (or reject) verdict.
func dropsAlways(r *nftables.Rule) bool {
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case *expr.Counter:
		case *expr.Verdict:
			return e.Kind == expr.VerdictDrop
		case *expr.Reject:
			return true
		default:
			return false
		}
	}
	return false
}
