package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/ftpgate/ftpgate/rules"
)

// everything is a kernel with every feature.
func everything() rules.Features {
	var fs rules.Features
	for f := range rules.NumFeatures {
		fs.Set(f, nil)
	}
	return fs
}

func TestKernelCheckVerdict(t *testing.T) {
	refused := errors.New("operation not supported")
	without := func(fs ...rules.Feature) rules.Features {
		all := everything()
		for _, f := range fs {
			all.Set(f, refused)
		}
		return all
	}
	for _, tc := range []struct {
		name string
		kc   kernelCheck
		want string // "" for no error
	}{
		{"all there, inline NAT", kernelCheck{fs: everything(), inline: true, nat: true}, ""},
		{"xtables queue only", kernelCheck{fs: without(rules.FeatureQueue), inline: true}, ""},
		{"native queue only", kernelCheck{fs: without(rules.FeatureXtQueue), inline: true}, ""},
		{"no queue at all", kernelCheck{fs: without(rules.FeatureQueue, rules.FeatureXtQueue), inline: true}, "nft queue (CONFIG_NFT_QUEUE) or the xtables NFQUEUE target"},
		{"no queue, passive", kernelCheck{fs: without(rules.FeatureQueue, rules.FeatureXtQueue)}, ""},
		{"no @ih inline", kernelCheck{fs: without(rules.FeatureInnerHeader), inline: true}, "@ih payload matches (Linux 5.16 or later"},
		{"no @ih passive", kernelCheck{fs: without(rules.FeatureInnerHeader)}, ""},
		{"no owner flag", kernelCheck{fs: without(rules.FeatureOwner)}, "the table owner flag (Linux 5.12 or later"},
		{"no set limit", kernelCheck{fs: without(rules.FeatureSetLimit)}, "set element limits (Linux 5.11 or later"},
		{"no element delete", kernelCheck{fs: without(rules.FeatureDynsetDelete)}, "(Linux 5.14 or later"},
		{"no fib inline", kernelCheck{fs: without(rules.FeatureFib), inline: true}, "fib in the forward and input hooks (Linux 5.19 or later"},
		{"no fib passive", kernelCheck{fs: without(rules.FeatureFib)}, "fib in the forward and input hooks (Linux 5.19 or later"},
		{"no socket, NAT", kernelCheck{fs: without(rules.FeatureSocket), inline: true, nat: true}, "socket (Linux 4.19 or later"},
		{"no inet nat, NAT", kernelCheck{fs: without(rules.FeatureNAT), inline: true, nat: true}, "inet nat (Linux 5.2 or later"},
		{"no inet nat, no NAT", kernelCheck{fs: without(rules.FeatureNAT), inline: true}, ""},
		{"no tproxy, NAT", kernelCheck{fs: without(rules.FeatureTProxy), inline: true, nat: true}, "tproxy (Linux 4.19 or later"},
		{"no tproxy, no NAT", kernelCheck{fs: without(rules.FeatureTProxy), inline: true}, ""},
		{"no ctnetlink, NAT", kernelCheck{fs: everything(), inline: true, nat: true, conntrackErr: refused}, "CONFIG_NF_CT_NETLINK"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.kc.release = "5.10.0-test"
			err := tc.kc.verdict()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("verdict: %v, want none", err)
			case tc.want != "" && err == nil:
				t.Errorf("verdict: none, want %q", tc.want)
			case tc.want != "":
				if !errors.Is(err, rules.ErrMissingFeature) || !strings.Contains(err.Error(), tc.want) ||
					!strings.HasPrefix(err.Error(), "kernel 5.10.0-test: ") || strings.Contains(err.Error(), "\n") {
					t.Errorf("verdict: %q, want one line with %q", err, tc.want)
				}
			}
		})
	}
}
