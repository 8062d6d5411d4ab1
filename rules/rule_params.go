package rules

import (
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// ruleParams is what the rules are built from: the pure builders
// (dataChainRules, copyChainRules, proxyRules, ...) read nothing else.
type ruleParams struct {
	table      *nftables.Table
	mark, mask uint32
	logGroup   uint16 // 0: no reports of used pinholes
	pinholes   pinholeSets
	peers      peersSets
	// FTPS scoped ranges (nil sets in tests that build none).
	scoped scopedSets
	// Inline capture only:
	inline bool
	queue  expr.Any // the queue statement or target
	ports  []uint16
	// ifaces, if set, scopes inline capture to the interfaces in it.
	ifaces *nftables.Set
	// NAT only:
	nat *natParams
}

// newRuleParams are the rules' inputs common to every capture.
func newRuleParams(t *nftables.Table, cfg *Config, sets *tableSets) ruleParams {
	p := ruleParams{
		table: t, mark: cfg.Mark, mask: cfg.MarkMask, logGroup: cfg.LogGroup,
		pinholes: sets.pinholes, peers: sets.peers, scoped: sets.scoped,
	}
	if cfg.NAT != nil {
		p.nat = &natParams{cfg: *cfg.NAT, maps: sets.nat}
	}
	return p
}
