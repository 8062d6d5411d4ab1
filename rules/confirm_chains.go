package rules

import (
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The chains that confirm admitted data connections run after the
// admin's filter chains (and firewalld's), before the security chains.
var confirmChains = []hookChain{
	{"confirm_ftp_data_forward", nftables.ChainHookForward, ConfirmChainPriority, false},
	{"confirm_ftp_data_input", nftables.ChainHookInput, ConfirmChainPriority, false},
	{"confirm_ftp_data_output", nftables.ChainHookOutput, ConfirmChainPriority, true},
}

// ConfirmChainPriority is "filter + 45": after the copy chains, so that a
// data connection's SYN that reaches it has passed every filter chain of
// the admin.
const ConfirmChainPriority = 45

// confirmRules report each admitted data connection that the admin's
// ruleset let through:
//
//	tcp flags & (syn | ack) == syn ct state new ct mark & MASK == MARK \
//	  log prefix "ftpgate: admitted" group LOGGROUP snaplen 128
//
// A pinhole used (reported by the consume rule, before the admin's
// chains) whose connection never shows here was dropped by the admin's
// ruleset: its accept line for the mark is missing or comes after a drop.
func confirmRules(p ruleParams, chain *nftables.Chain) []*nftables.Rule {
	return []*nftables.Rule{{Table: p.table, Chain: chain, UserData: comment("data connection ftpgate admitted, let through by your ruleset: report it"),
		Exprs: slices.Concat(tcp(), synOnly(), ctState(expr.CtStateBitNEW, expr.CmpOpNeq),
			markIs(&expr.Ct{Register: 1, Key: expr.CtKeyMARK}, p.mask, p.mark, expr.CmpOpEq),
			[]expr.Any{&expr.Log{
				Key:     1<<unix.NFTA_LOG_PREFIX | 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_SNAPLEN,
				Data:    []byte(LogPrefixAdmitted),
				Group:   p.logGroup,
				Snaplen: consumedSnaplen,
			}})}}
}
