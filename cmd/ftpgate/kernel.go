package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/ftpgate/ftpgate/capture"
	"github.com/ftpgate/ftpgate/nat"
	"github.com/ftpgate/ftpgate/rules"
	flag "github.com/spf13/pflag"
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
// for each feature this run will use, and fails with one line naming the
// first missing one and the Linux version that has it: a kernel too old
// for ftpgate never gets half a table. What it found is logged once the
// sources are open (kernelCheck.log), with the queue's own answer.
func (d *daemon) checkKernel() error {
	fs, err := rules.ProbeKernel(0)
	if err != nil {
		if errors.Is(err, rules.ErrNoNftables) {
			return fmt.Errorf("%w\n%s", err, notBlind)
		}
		return err
	}
	kc := kernelCheck{release: kernelRelease(), fs: fs, inline: *d.rv.capture == "inline", nat: d.natOn, natPacket: d.rv.nf.packet()}
	if kc.nat {
		kc.conntrackErr = nat.ProbeConntrack(0)
	}
	if err := kc.verdict(); err != nil {
		return err
	}
	// The NFQUEUE glue is read off the queue itself when it is bound
	// (QueueSource.Conntrack): probing it here would bind the queue
	// number once more, and drop what the kernel queues meanwhile.
	d.kernel = kc
	return nil
}

// kernelCheck is what the probes found, and what the run needs of it.
type kernelCheck struct {
	release      string
	fs           rules.Features
	inline, nat  bool
	natPacket    bool  // NAT in the packet path, not through the proxy
	conntrackErr error // ctnetlink, probed when nat
	queueGlue    bool  // NFQUEUE carries conntrack, probed when inline
	glueErr      error
	glueKnown    bool // queueGlue and glueErr are set
	// natKernelShifts: the NAT packet path leaves the shift to the
	// kernel (natFlags.kernelShift), known once its queue is bound.
	natKernelShifts bool
}

// verdict is nil when the kernel has what the run needs.
func (kc kernelCheck) verdict() error {
	// fib is in the mark chains of every mode (the reverse-path check).
	need := []rules.Feature{rules.FeatureOwner, rules.FeatureSetLimit, rules.FeatureDynsetDelete, rules.FeatureFib}
	if kc.inline {
		need = append(need, rules.FeatureInnerHeader)
	}
	switch {
	case kc.nat && kc.natPacket:
		need = append(need, rules.FeatureNAT)
	case kc.nat:
		need = append(need, rules.FeatureTProxy, rules.FeatureSocket, rules.FeatureNAT)
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
		case !kc.glueKnown:
		case kc.glueErr != nil:
			attrs = append(attrs, "nfqueue_conntrack", "unknown: "+kc.glueErr.Error())
		case kc.queueGlue:
			attrs = append(attrs, "nfqueue_conntrack", "yes")
		default:
			attrs = append(attrs, "nfqueue_conntrack", "no (CONFIG_NETFILTER_NETLINK_GLUE_CT off)")
		}
	}
	switch {
	case kc.nat && kc.natPacket && kc.natKernelShifts:
		attrs = append(attrs, "nat", "packet path: translated control connections' segments with data, SYN, FIN or RST queued both ways and rewritten by ftpgate, sequence numbers shifted by the kernel (NFQUEUE glue, helper stub \""+nat.HelperStub+"\", ctnetlink)")
	case kc.nat && kc.natPacket:
		attrs = append(attrs, "nat", "packet path: translated control connections' segments queued both ways, rewritten and shifted by ftpgate (ctnetlink)")
	case kc.nat:
		attrs = append(attrs, "nat", "control proxy (tproxy, ctnetlink)")
	}
	log.Info("kernel", attrs...)
}

// kernelDescription is kernel's help, and its part of the man page.
const kernelDescription = `Asks the running kernel, in a throwaway table that never matches a packet,
for each nf_tables feature ftpgate uses, and says which capture modes and
which NAT path can run on it, with the Linux version that has what is
missing. 'ftpgate run' makes the same check before it creates its table and
refuses to start, with the same one line, on a kernel that lacks a feature
the run needs. Exits 0 when the default run (--capture inline, with NAT)
can run, 1 otherwise. Needs root or CAP_NET_ADMIN.
`

func kernelFlags() *flag.FlagSet {
	fs := flag.NewFlagSet("kernel", flag.ContinueOnError)
	fs.Uint("queue", 65535, "a free NFQUEUE number, bound for a moment to ask for conntrack attributes (not the running ftpgate's --queue: what the kernel queues there meanwhile would be lost)")
	return fs
}

// cmdKernel prints what checkKernel would find, for every mode.
func cmdKernel(args []string, stdout, stderr io.Writer) error {
	fl := kernelFlags()
	fl.SetOutput(stderr)
	fl.Usage = func() { writeHelp(stdout, kernelCommand, fl) }
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() > 0 {
		return usageError{fmt.Errorf("no arguments expected, got %q", fl.Args())}
	}
	queue, _ := fl.GetUint("queue")
	if queue > 65535 {
		return usageError{fmt.Errorf("--queue %d: want 0-65535", queue)}
	}
	fs, err := rules.ProbeKernel(0)
	if err != nil {
		return err
	}
	kc := kernelCheck{release: kernelRelease(), fs: fs, inline: true, nat: true}
	kc.conntrackErr = nat.ProbeConntrack(0)
	kc.queueGlue, kc.glueErr = capture.ProbeQueueConntrack(uint16(queue), 0)
	kc.glueKnown = true
	fmt.Fprintf(stdout, "kernel %s\n", kc.release)
	for f := range rules.NumFeatures {
		fmt.Fprintf(stdout, "  %-44s %s\n", f, yesNo(fs.Has(f), fs.Err(f), f.Since(), f.Config()))
	}
	fmt.Fprintf(stdout, "  %-44s %s\n", "ctnetlink", yesNo(kc.conntrackErr == nil, kc.conntrackErr, "2.6.14", "CONFIG_NF_CT_NETLINK"))
	glue := "unknown: " + fmt.Sprint(kc.glueErr)
	if kc.glueErr == nil {
		glue = yesNo(kc.queueGlue, errors.New("the kernel refused the flag"), "4.3", "CONFIG_NETFILTER_NETLINK_GLUE_CT")
	}
	fmt.Fprintf(stdout, "  %-44s %s\n", "NFQUEUE conntrack attributes", glue)
	// The default run is inline, with NAT wherever the admin's rules
	// translate control connections (--nat on).
	modes := []struct {
		name                   string
		inline, nat, isDefault bool
	}{
		{"--capture inline (the default, with NAT)", true, true, true},
		{"--capture inline --nat off", true, false, false},
		{"--capture passive", false, false, false},
	}
	var first error
	for _, m := range modes {
		c := kc
		c.inline, c.nat = m.inline, m.nat
		verdict := "can run"
		if err := c.verdict(); err != nil {
			verdict = "cannot run: " + strings.TrimPrefix(err.Error(), "kernel "+kc.release+": ")
			if m.isDefault {
				first = err
			}
		} else if m.inline && !fs.Has(rules.FeatureQueue) {
			verdict += " (holds packets with the xtables NFQUEUE target)"
		}
		fmt.Fprintf(stdout, "%s: %s\n", m.name, verdict)
	}
	return first
}

// yesNo is one feature's line: yes, or no with where to get it.
func yesNo(ok bool, err error, since, config string) string {
	if ok {
		return "yes"
	}
	return fmt.Sprintf("no (Linux %s or later, %s; %v)", since, config, err)
}
