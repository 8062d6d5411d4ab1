package nat

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ProxyRoutes are the policy routing entries that deliver packets
// marked for the control proxy to the local host, though they are
// addressed to others (the standard setup of tproxy):
//
//	ip rule add fwmark MARK/MARK lookup TABLE priority TABLE
//	ip route add local 0.0.0.0/0 dev lo table TABLE
//	ip -6 rule add fwmark MARK/MARK lookup TABLE priority TABLE
//	ip -6 route add local ::/0 dev lo table TABLE
//
// Unlike ftpgate's nftables table they outlive the process if it is
// killed; they are inert then (nothing sets the mark once ftpgate's table
// is gone), and the next start replaces them.
type ProxyRoutes struct {
	mark  uint32
	table int
	ipv6  bool
}

// AddProxyRoutes adds the routes, first removing any left by an earlier
// run with the same table; the IPv6 ones only when ipv6 (see
// IPv6Enabled: a host with IPv6 disabled refuses them).
func AddProxyRoutes(mark uint32, table int, ipv6 bool) (*ProxyRoutes, error) {
	r := &ProxyRoutes{mark: mark, table: table, ipv6: ipv6}
	_ = r.Close()
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("finding the loopback interface: %w", err)
	}
	for _, fam := range r.families() {
		dst := &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
		if fam == unix.AF_INET6 {
			dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
		route := &netlink.Route{LinkIndex: lo.Attrs().Index, Dst: dst, Table: table, Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST}
		if err := netlink.RouteReplace(route); err != nil {
			_ = r.Close()
			return nil, fmt.Errorf("adding the control proxy's local route to table %d: %w", table, err)
		}
		if err := netlink.RuleAdd(r.rule(fam)); err != nil {
			_ = r.Close()
			return nil, fmt.Errorf("adding the control proxy's routing rule (fwmark %#x lookup %d): %w", mark, table, err)
		}
	}
	return r, nil
}

func (r *ProxyRoutes) families() []int {
	if r.ipv6 {
		return []int{unix.AF_INET, unix.AF_INET6}
	}
	return []int{unix.AF_INET}
}

func (r *ProxyRoutes) rule(family int) *netlink.Rule {
	rule := netlink.NewRule()
	rule.Family = family
	rule.Mark = r.mark
	m := r.mark
	rule.Mask = &m
	rule.Table = r.table
	rule.Priority = r.table
	return rule
}

// Close removes the rules and routes.
func (r *ProxyRoutes) Close() error {
	var errs []error
	for _, fam := range r.families() {
		for {
			err := netlink.RuleDel(r.rule(fam))
			if err != nil {
				if !errors.Is(err, unix.ENOENT) {
					errs = append(errs, err)
				}
				break
			}
		}
		routes, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: r.table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, rt := range routes {
			if err := netlink.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// IPv6Enabled reports whether this network namespace's loopback has
// IPv6, which the proxy needs for its IPv6 side (its listener on ::1, its
// local route): not when the kernel has no IPv6 at all, nor when
// net.ipv6.conf.all (and so lo) has disable_ipv6 set, as IPv4-only
// gateways often do.
func IPv6Enabled() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv6/conf/lo/disable_ipv6")
	return err == nil && strings.TrimSpace(string(b)) == "0"
}
