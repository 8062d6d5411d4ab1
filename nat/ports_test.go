package nat

import (
	"net/netip"
	"testing"
)

var (
	public = netip.MustParseAddr("203.0.113.1")
	client = netip.MustParsePrefix("192.0.2.2/32")
	other  = netip.MustParsePrefix("192.0.2.3/32")
)

// TestPickFindsTheOneFreePort: in a small range where every port but
// one is taken outside ftpgate, a pick finds it, every time: the bound
// on checks counts distinct ports, not random draws of the same ones.
func TestPickFindsTheOneFreePort(t *testing.T) {
	free := netip.AddrPortFrom(public, 61002)
	for range 2000 {
		calls := 0
		np := NewPorts(61000, 61003, 4, func(ap netip.AddrPort) bool { calls++; return ap != free })
		p, err := np.Pick(public, client)
		if err != nil || p != free.Port() {
			t.Fatalf("picked %d, %v; want %d", p, err, free.Port())
		}
		if calls > 4 {
			t.Fatalf("%d checks for a range of 4", calls)
		}
	}
}

// TestPickBounded: a large range that reads as taken costs at most
// MaxPortChecks questions, then an error.
func TestPickBounded(t *testing.T) {
	calls := 0
	np := NewPorts(1024, 65535, 100, func(netip.AddrPort) bool { calls++; return true })
	if p, err := np.Pick(public, client); err == nil {
		t.Fatalf("picked %d from a range all taken", p)
	}
	if calls > MaxPortChecks {
		t.Errorf("%d checks, want at most %d", calls, MaxPortChecks)
	}
}

// TestPickNeverAHeldPort: a port held by a live mapping is never handed
// out again until it is released, and then it is.
func TestPickNeverAHeldPort(t *testing.T) {
	np := NewPorts(61000, 61001, 4, nil)
	a, err := np.Pick(public, client)
	if err != nil {
		t.Fatal(err)
	}
	np.Hold(netip.AddrPortFrom(public, a), client)
	b, err := np.Pick(public, client)
	if err != nil || b == a {
		t.Fatalf("second pick %d, %v; first %d", b, err, a)
	}
	np.Hold(netip.AddrPortFrom(public, b), client)
	if p, err := np.Pick(public, client); err == nil {
		t.Fatalf("picked %d from a range all held", p)
	}
	np.Release(netip.AddrPortFrom(public, a), client)
	if p, err := np.Pick(public, client); err != nil || p != a {
		t.Fatalf("after release: %d, %v; want %d", p, err, a)
	}
	if np.Held() != 1 {
		t.Errorf("held %d, want 1", np.Held())
	}
}

// TestPickShare: a client holds at most its share; another still gets
// ports.
func TestPickShare(t *testing.T) {
	np := NewPorts(61000, 61999, 2, nil)
	for range 2 {
		p, err := np.Pick(public, client)
		if err != nil {
			t.Fatal(err)
		}
		np.Hold(netip.AddrPortFrom(public, p), client)
	}
	if p, err := np.Pick(public, client); err == nil {
		t.Fatalf("a client past its share got %d", p)
	}
	if _, err := np.Pick(public, other); err != nil {
		t.Errorf("another client: %v", err)
	}
}

// TestZeroPorts hands out nothing.
func TestZeroPorts(t *testing.T) {
	var np Ports
	if p, err := np.Pick(public, client); err == nil {
		t.Fatalf("zero Ports picked %d", p)
	}
}
