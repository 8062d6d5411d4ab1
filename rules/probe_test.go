package rules

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/ftpgate/ftpgate/internal/netnstest"
)

// TestProbeKernel compares what ProbeKernel says of the running kernel
// with what the nft command can build on it, feature by feature, so it
// holds on any kernel (the host's, the VM's): a probe that says yes where
// nft fails, or no where nft succeeds, is wrong. The owner flag and the
// set limit have no nft equivalent that outlives nft's own socket; they
// are checked against Open, which needs both.
func TestProbeKernel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces and nf_tables")
	}
	ns := netnstest.New(t)
	fs, err := ProbeKernel(int(ns))
	if err != nil {
		t.Fatalf("ProbeKernel: %v", err)
	}
	t.Logf("features: %s", fs)
	for f := range NumFeatures {
		if !fs.Has(f) {
			t.Logf("%s: %v", f, fs.Err(f))
		}
	}

	// meta mark 1 meta mark 2: nft's own never-matching prefix.
	base := `table inet probe_check {
	set peers { type ipv4_addr; flags dynamic; }
	chain forward { type filter hook forward priority 0; }
	chain prerouting { type filter hook prerouting priority -150; }
}
`
	for _, tc := range []struct {
		f    Feature
		rule string
	}{
		{FeatureDynsetDelete, "add rule inet probe_check forward meta mark 1 meta mark 2 delete @peers { ip saddr }"},
		{FeatureInnerHeader, "add rule inet probe_check forward meta mark 1 meta mark 2 @ih,0,8 0"},
		{FeatureFib, "add rule inet probe_check forward meta mark 1 meta mark 2 fib saddr . iif oif 0"},
		{FeatureQueue, "add rule inet probe_check forward meta mark 1 meta mark 2 queue num 65535 bypass"},
		{FeatureTProxy, "add rule inet probe_check prerouting meta mark 1 meta mark 2 meta l4proto tcp tproxy ip to 127.0.0.1:21"},
		{FeatureSocket, "add rule inet probe_check prerouting meta mark 1 meta mark 2 socket transparent 1"},
		{FeatureNAT, "add chain inet probe_check nat { type nat hook prerouting priority -100; }\n" +
			"add rule inet probe_check nat meta mark 1 meta mark 2 dnat ip to 127.0.0.1"},
	} {
		var out []byte
		var nftErr error
		// The table goes in a transaction of its own: a kernel may skip
		// validating the chains of a table the same batch deletes (5.10
		// does), which would take a rule it refuses otherwise.
		netnstest.In(t, ns, func() {
			cmd := exec.Command("nft", "-f", "-")
			cmd.Stdin = strings.NewReader(base + tc.rule + "\n")
			out, nftErr = cmd.CombinedOutput()
			_ = exec.Command("nft", "delete", "table", "inet", "probe_check").Run()
		})
		if got, want := fs.Has(tc.f), nftErr == nil; got != want {
			t.Errorf("probe says %s %v; nft building %q: %v %s", tc.f, got, tc.rule, nftErr, out)
		}
	}
	// The xtables target has no nft syntax; one of the two queues must work
	// (every kernel ftpgate was tested on has one).
	if !fs.Has(FeatureQueue) && !fs.Has(FeatureXtQueue) {
		t.Errorf("neither queue: %v / %v", fs.Err(FeatureQueue), fs.Err(FeatureXtQueue))
	}
	n, err := Open(Config{Table: "probe_open", Mark: 1, MarkMask: 1, NetNS: int(ns)})
	if opened := err == nil; opened != (fs.Has(FeatureOwner) && fs.Has(FeatureSetLimit)) {
		t.Errorf("Open: %v, but the probe says owner %v, set limit %v", err, fs.Has(FeatureOwner), fs.Has(FeatureSetLimit))
	}
	if n != nil {
		n.Close()
	}
	// Nothing of the probe is left.
	if listing := netnstest.Nft(t, ns, "list", "tables"); strings.Contains(listing, probeTablePrefix) {
		t.Errorf("probe table left behind:\n%s", listing)
	}
}

func TestFeaturesRequire(t *testing.T) {
	var fs Features
	fs.Set(FeatureFib, nil)
	fs.Set(FeatureTProxy, errors.New("operation not supported"))
	if err := fs.Require(FeatureFib); err != nil {
		t.Errorf("Require(fib) = %v", err)
	}
	err := fs.Require(FeatureFib, FeatureTProxy)
	if !errors.Is(err, ErrMissingFeature) {
		t.Fatalf("Require(fib, tproxy) = %v, want ErrMissingFeature", err)
	}
	if want := "tproxy (Linux 4.19 or later, CONFIG_NFT_TPROXY; the kernel answered: operation not supported)"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}
}
