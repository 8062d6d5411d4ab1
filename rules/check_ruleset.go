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
	byName := map[string]*nftables.Chain{}
	for _, c := range chains {
		byName[chainKey(c.Table, c.Name)] = c
	}
	rulesOf := map[string][]*nftables.Rule{}
	get := func(c *nftables.Chain) ([]*nftables.Rule, error) {
		k := chainKey(c.Table, c.Name)
		if r, ok := rulesOf[k]; ok {
			return r, nil
		}
		r, err := conn.GetRules(c.Table, c)
		if err != nil {
			return nil, fmt.Errorf("listing the rules of chain %s: %w", c.Name, err)
		}
		rulesOf[k] = r
		return r, nil
	}
	var out []RulesetProblem
	for _, c := range chains {
		if c.Hooknum == nil || c.Type != nftables.ChainTypeFilter || c.Table.Name == own {
			continue
		}
		hook := ""
		switch *c.Hooknum {
		case *nftables.ChainHookForward:
			hook = "forward"
		case *nftables.ChainHookInput:
			hook = "input"
		default:
			continue
		}
		fam := familyName(c.Table.Family)
		if fam == "" {
			continue
		}
		rules, err := get(c)
		if err != nil {
			return nil, err
		}
		drop := ""
		if c.Policy != nil && *c.Policy == nftables.ChainPolicyDrop {
			drop = "policy drop"
		} else {
			for _, r := range rules {
				if dropsAlways(r) {
					drop = "a rule drops all that reaches it"
					break
				}
			}
		}
		if drop == "" {
			continue
		}
		ok, err := acceptsMark(c, rules, get, byName, mark, mask, map[string]bool{})
		if err != nil {
			return nil, err
		}
		if !ok {
			out = append(out, RulesetProblem{Family: fam, Table: c.Table.Name, Chain: c.Name, Hook: hook, Drop: drop})
		}
	}
	return out, nil
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

// acceptsMark walks a chain's rules in order until an unconditional drop.
func acceptsMark(c *nftables.Chain, rules []*nftables.Rule, get func(*nftables.Chain) ([]*nftables.Rule, error),
	byName map[string]*nftables.Chain, mark, mask uint32, seen map[string]bool) (bool, error) {
	seen[chainKey(c.Table, c.Name)] = true
	for _, r := range rules {
		if acceptsMarkRule(r, mark, mask) {
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
			target := byName[chainKey(c.Table, v.Chain)]
			if target == nil || seen[chainKey(c.Table, v.Chain)] {
				continue
			}
			sub, err := get(target)
			if err != nil {
				return false, err
			}
			if ok, err := acceptsMark(target, sub, get, byName, mark, mask, seen); ok || err != nil {
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
