package capture_test

import (
	"testing"

	"github.com/ftpgate/ftpgate/capture"
	"github.com/ftpgate/ftpgate/internal/netnstest"
)

// TestProbeQueueConntrack checks the probe against the kernel's own
// configuration: the glue is CONFIG_NETFILTER_NETLINK_GLUE_CT (off on the
// host's 6.18, on in Debian's 6.1).
func TestProbeQueueConntrack(t *testing.T) {
	ns := netnstest.New(t)
	kcfg := netnstest.KernelConfig(t)
	got, err := capture.ProbeQueueConntrack(7777, int(ns))
	if err != nil {
		t.Fatalf("ProbeQueueConntrack: %v", err)
	}
	if want := kcfg["CONFIG_NETFILTER_NETLINK_GLUE_CT"] == "y"; got != want {
		t.Errorf("probe says %v, the kernel configuration GLUE_CT=%q", got, kcfg["CONFIG_NETFILTER_NETLINK_GLUE_CT"])
	}
	// The queue is free again afterwards.
	q, err := capture.OpenQueue(7777, 16, int(ns))
	if err != nil {
		t.Fatalf("queue 7777 still bound after the probe: %v", err)
	}
	defer q.Close()
	// OpenQueue asks the same on the queue it binds.
	if q.Conntrack != got || q.ConntrackErr != nil {
		t.Errorf("OpenQueue found conntrack attributes %v (%v), the probe %v", q.Conntrack, q.ConntrackErr, got)
	}
}
