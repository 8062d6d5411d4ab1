// Package source names the unit in which ftpgate counts what one source
// holds of a capped resource (sessions, proxied connections, scoped
// ranges): an IPv4 address, or an IPv6 address's /64, which one host can
// hold whole and pick addresses from at will.
package source

import "net/netip"

// Of returns the share that addr counts against.
func Of(addr netip.Addr) netip.Prefix {
	addr = addr.Unmap()
	if addr.Is4() {
		return netip.PrefixFrom(addr, 32)
	}
	p, _ := addr.Prefix(64)
	return p
}

// Shares counts what each source holds.
type Shares map[netip.Prefix]int

// Add counts one more for k.
func (s Shares) Add(k netip.Prefix) { s[k]++ }

// Remove counts one less for k.
func (s Shares) Remove(k netip.Prefix) {
	if s[k]--; s[k] <= 0 {
		delete(s, k)
	}
}
