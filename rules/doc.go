// Package rules is the nftables side of ftpgate and nothing else: one
// table the daemon owns, two sets of pinholes (IPv4, IPv6) whose elements
// admit one packet each, the sets of control-session peers, the chains
// that consume a pinhole on the first packet of its data connection and
// mark that connection (and, inline, copy control segments and hold data
// SYNs), batched commits, and a dry-run backend.
//
// Each kernel object has its file: the owned table (table.go), its sets
// and maps (pinhole_sets.go, peers_sets.go, scoped_sets.go, nat_maps.go,
// interfaces_set.go), its chains (mark_chains.go, inline_chains.go,
// confirm_chains.go, nat_chains.go), and the batches that change elements
// (commit.go). The rules are built by pure functions from ruleParams
// (rule_params.go, exprs.go); golden_test.go checks their bytes without
// root, nftables_test.go their behaviour in a throwaway namespace.
// Nftables (nftables.go) is the front door the rest of ftpgate uses;
// ProbeKernel (probe.go) asks the kernel beforehand which features it has.
package rules
