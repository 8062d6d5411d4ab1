package nat

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"

	"github.com/ftpgate/ftpgate/internal/source"
)

// Ports hands out the public ports of mappings from the range ftpgate
// owns (--nat-ports), at random, never one a live mapping holds nor one
// the gateway itself listens on or the admin's rules forward (InUse),
// and no more to one client (per address, per /64 for IPv6) than its
// share. The zero value hands out nothing.
type Ports struct {
	lo, hi   uint16
	used     map[netip.AddrPort]int // public address:port -> live plans and mappings on it
	inUse    func(netip.AddrPort) bool
	bySource source.Shares
	share    int
}

// NewPorts returns the ports lo-hi, share of them at most to one client.
// inUse, if not nil, reports the ports that are taken outside ftpgate.
func NewPorts(lo, hi uint16, share int, inUse func(netip.AddrPort) bool) *Ports {
	return &Ports{lo: lo, hi: hi, used: map[netip.AddrPort]int{}, inUse: inUse, bySource: source.Shares{}, share: share}
}

// MaxPortChecks bounds the ports one Pick asks InUse about: when the
// range reads as taken, an announcement is refused, not paid for with a
// sweep.
const MaxPortChecks = 16

// ErrRangeEmpty is the error of a range with no port in it.
var ErrRangeEmpty = errors.New("the range is empty")

// Pick returns a free port of the range on addr for a client of src, or
// why there is none. Random picks first, so that ports are not guessable
// in order; a sweep from a random point then finds the last free ones.
// The port is not held until Hold.
func (np *Ports) Pick(addr netip.Addr, src netip.Prefix) (uint16, error) {
	n := int(np.hi) - int(np.lo) + 1
	if n <= 0 || np.used == nil {
		return 0, ErrRangeEmpty
	}
	if np.bySource[src] >= np.share {
		return 0, fmt.Errorf("this client holds its share of %d public ports", np.share)
	}
	// tried: the ports asked about in this pick, each once, so that a
	// small range with one free port is found within the bound.
	var tried [MaxPortChecks]uint16
	checks := 0
	free := func(p uint16) bool {
		ap := netip.AddrPortFrom(addr, p)
		if np.used[ap] != 0 || checks >= MaxPortChecks || slices.Contains(tried[:checks], p) {
			return false
		}
		tried[checks] = p
		checks++
		return np.inUse == nil || !np.inUse(ap)
	}
	for range 32 {
		if p := np.lo + uint16(rand.IntN(n)); free(p) {
			return p, nil
		}
	}
	start := rand.IntN(n)
	for i := range n {
		if p := np.lo + uint16((start+i)%n); free(p) {
			return p, nil
		}
		if checks >= MaxPortChecks {
			return 0, fmt.Errorf("the %d ports tried are all taken (this host listens on them, or your rules forward them)", checks)
		}
	}
	if checks > 0 {
		return 0, fmt.Errorf("the %d ports free of mappings are all taken (this host listens on them, or your rules forward them)", checks)
	}
	return 0, errors.New("every port is held by a live mapping")
}

// Hold takes ap for a client of src.
func (np *Ports) Hold(ap netip.AddrPort, src netip.Prefix) {
	np.used[ap]++
	np.bySource.Add(src)
}

// Release gives back what Hold took; an invalid ap is nothing.
func (np *Ports) Release(ap netip.AddrPort, src netip.Prefix) {
	if !ap.IsValid() {
		return
	}
	if np.used[ap]--; np.used[ap] <= 0 {
		delete(np.used, ap)
	}
	np.bySource.Remove(src)
}

// Held is how many public address:ports are held.
func (np *Ports) Held() int { return len(np.used) }

// Range is the range ports are handed out from.
func (np *Ports) Range() (lo, hi uint16) { return np.lo, np.hi }
