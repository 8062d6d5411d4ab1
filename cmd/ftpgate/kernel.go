package main

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/ftpgate/ftpgate/capture"
	"github.com/ftpgate/ftpgate/nat"
	"github.com/ftpgate/ftpgate/rules"
	"golang.org/x/sys/unix"
)

// kernelRelease is uname -r.
func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// checkKernel asks the kernel, before any of ftpgate's table exists,
// for each feature this run will use, logs which path each part takes,
// and fails with one line naming the first missing one and the Linux
// version that has it: a kernel too old for ftpgate never gets half a
// table.
func (d *daemon) checkKernel() error {
	fs, err := rules.ProbeKernel(0)
	if err != nil {
		if errors.Is(err, rules.ErrNoNftables) {
			return fmt.Errorf("%w\n%s", err, notBlind)
		}
		return err
	}
	kc := kernelCheck{release: kernelRelease(), fs: fs, inline: *d.rv.capture == "inline", nat: d.natOn}
	if kc.nat {
		kc.conntrackErr = nat.ProbeConntrack(0)
	}
	if kc.inline {
		kc.queueGlue, kc.glueErr = capture.ProbeQueueConntrack(uint16(*d.rv.queueNum), 0)
	}
	if err := kc.verdict(); err != nil {
		return err
	}
	kc.log(d.log)
	return nil
}

// kernelCheck is what the probes found, and what the run needs of it.
type kernelCheck struct {
	release      string
	fs           rules.Features
	inline, nat  bool
	conntrackErr error // ctnetlink, probed when nat
	queueGlue    bool  // NFQUEUE carries conntrack, probed when inline
	glueErr      error
}

// verdict is nil when the kernel has what the run needs.
func (kc kernelCheck) verdict() error {
	need := []rules.Feature{rules.FeatureOwner, rules.FeatureSetLimit, rules.FeatureDynsetDelete}
	if kc.inline {
		need = append(need, rules.FeatureInnerHeader, rules.FeatureFib)
	}
	if kc.nat {
		need = append(need, rules.FeatureTProxy)
	}
	if err := kc.fs.Require(need...); err != nil {
		return fmt.Errorf("kernel %s: %w", kc.release, err)
	}
	if kc.inline && !kc.fs.Has(rules.FeatureQueue) && !kc.fs.Has(rules.FeatureXtQueue) {
		return fmt.Errorf("kernel %s: %w: a way to hold packets for ftpgate, nft queue (CONFIG_NFT_QUEUE) or the xtables NFQUEUE target (CONFIG_NFT_COMPAT, CONFIG_NETFILTER_XT_TARGET_NFQUEUE); the kernel answered: %v; %v (or use --capture passive)",
			kc.release, rules.ErrMissingFeature, kc.fs.Err(rules.FeatureQueue), kc.fs.Err(rules.FeatureXtQueue))
	}
	if kc.nat && kc.conntrackErr != nil {
		return fmt.Errorf("kernel %s: %w: NAT needs %v (CONFIG_NF_CT_NETLINK; or --nat off)", kc.release, rules.ErrMissingFeature, kc.conntrackErr)
	}
	return nil
}

// log says which path each part of the run takes on this kernel.
func (kc kernelCheck) log(log *slog.Logger) {
	attrs := []any{"release", kc.release, "features", kc.fs.String()}
	if kc.inline {
		hold := "nft queue"
		if !kc.fs.Has(rules.FeatureQueue) {
			hold = "xtables NFQUEUE target (no nft queue)"
		}
		attrs = append(attrs, "hold", hold)
		switch {
		case kc.glueErr != nil:
			attrs = append(attrs, "nfqueue_conntrack", "unknown: "+kc.glueErr.Error())
		case kc.queueGlue:
			attrs = append(attrs, "nfqueue_conntrack", "yes")
		default:
			attrs = append(attrs, "nfqueue_conntrack", "no (CONFIG_NETFILTER_NETLINK_GLUE_CT off)")
		}
	}
	if kc.nat {
		attrs = append(attrs, "nat", "control proxy (tproxy, ctnetlink)")
	}
	log.Info("kernel", attrs...)
}
