package rules

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
)

// PortForward is a rule of the admin's that sends TCP connections to
// some addresses and ports elsewhere: a destination NAT (dnat,
// redirect, the xtables DNAT and REDIRECT targets) or a tproxy. Addrs
// and Ports are what its matches say; empty means any, which is also
// what a match ftpgate cannot read counts as.
type PortForward struct {
	Table, Chain string
	Addrs        []netip.Prefix
	Ports        [][2]uint16
}

// Covers reports whether a connection to ap would be forwarded.
func (f PortForward) Covers(ap netip.AddrPort) bool {
	addrOK := len(f.Addrs) == 0 || slices.ContainsFunc(f.Addrs, func(p netip.Prefix) bool { return p.Contains(ap.Addr()) })
	portOK := len(f.Ports) == 0 || slices.ContainsFunc(f.Ports, func(r [2]uint16) bool { return r[0] <= ap.Port() && ap.Port() <= r[1] })
	return addrOK && portOK
}

func (f PortForward) String() string {
	return fmt.Sprintf("%s %s: addresses %v ports %v", f.Table, f.Chain, f.Addrs, f.Ports)
}

// PortForwards reads the admin's NAT chains (every table but ftpgate's)
// and returns the rules that forward connections, so that the public
// ports ftpgate hands out for NAT are never ones the admin forwards
// elsewhere: ftpgate's mappings come first in the kernel and would take
// them over.
//
//	nft list ruleset
func (n *Nftables) PortForwards() ([]PortForward, error) {
	return portForwards(n.conn, n.cfg.Table)
}

func portForwards(conn *nftables.Conn, own string) ([]PortForward, error) {
	chains, err := conn.ListChains()
	if err != nil {
		return nil, fmt.Errorf("listing chains: %w", err)
	}
	var out []PortForward
	for _, c := range chains {
		if c.Table.Name == own {
			continue
		}
		rules, err := conn.GetRules(c.Table, c)
		if err != nil {
			return nil, fmt.Errorf("listing the rules of chain %s: %w", c.Name, err)
		}
		for _, r := range rules {
			if f, ok := forwardOf(conn, c, r); ok {
				out = append(out, f)
			}
		}
	}
	return out, nil
}

// forwardOf reads one rule: whether it forwards, and what it matches.
func forwardOf(conn *nftables.Conn, c *nftables.Chain, r *nftables.Rule) (PortForward, bool) {
	f := PortForward{Table: c.Table.Name, Chain: c.Name}
	forwards := false
	// What each register holds: a destination address or port.
	const (
		none = iota
		daddr4
		daddr6
		dport
	)
	regs := map[uint32]int{}
	anyAddr, anyPort := false, false
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case *expr.Payload:
			switch {
			case e.Base == expr.PayloadBaseNetworkHeader && e.Offset == 16 && e.Len == 4:
				regs[e.DestRegister] = daddr4
			case e.Base == expr.PayloadBaseNetworkHeader && e.Offset == 24 && e.Len == 16:
				regs[e.DestRegister] = daddr6
			case e.Base == expr.PayloadBaseTransportHeader && e.Offset == 2 && e.Len == 2:
				regs[e.DestRegister] = dport
			default:
				regs[e.DestRegister] = none
			}
		case *expr.Cmp:
			if e.Op != expr.CmpOpEq {
				switch regs[e.Register] {
				case daddr4, daddr6:
					anyAddr = true
				case dport:
					anyPort = true
				}
				continue
			}
			switch regs[e.Register] {
			case daddr4, daddr6:
				if a, ok := netip.AddrFromSlice(e.Data); ok {
					f.Addrs = append(f.Addrs, netip.PrefixFrom(a, a.BitLen()))
				}
			case dport:
				if len(e.Data) == 2 {
					p := binary.BigEndian.Uint16(e.Data)
					f.Ports = append(f.Ports, [2]uint16{p, p})
				}
			}
		case *expr.Range:
			if regs[e.Register] == dport && e.Op == expr.CmpOpEq && len(e.FromData) == 2 && len(e.ToData) == 2 {
				f.Ports = append(f.Ports, [2]uint16{binary.BigEndian.Uint16(e.FromData), binary.BigEndian.Uint16(e.ToData)})
			} else if regs[e.Register] == dport {
				anyPort = true
			}
		case *expr.Lookup:
			kind := regs[e.SourceRegister]
			if kind == none {
				continue
			}
			vals, ok := setValues(conn, c.Table, e)
			if !ok || e.Invert {
				anyAddr, anyPort = anyAddr || kind != dport, anyPort || kind == dport
				continue
			}
			for _, v := range vals {
				switch {
				case kind == dport && len(v[0]) == 2:
					f.Ports = append(f.Ports, [2]uint16{binary.BigEndian.Uint16(v[0]), binary.BigEndian.Uint16(v[1])})
				case kind != dport:
					if lo, ok := netip.AddrFromSlice(v[0]); ok {
						if hi, ok := netip.AddrFromSlice(v[1]); ok && hi != lo {
							anyAddr = true // an address range: counted as any
						} else {
							f.Addrs = append(f.Addrs, netip.PrefixFrom(lo, lo.BitLen()))
						}
					}
				}
			}
		case *expr.Match:
			if tcp, ok := e.Info.(*xt.Tcp); ok {
				if tcp.InvFlags != 0 {
					anyPort = true
				} else if tcp.DstPorts != [2]uint16{0, 0xffff} {
					f.Ports = append(f.Ports, tcp.DstPorts)
				}
			}
		case *expr.NAT:
			if e.Type == expr.NATTypeDestNAT {
				forwards = true
			}
		case *expr.Redir, *expr.TProxy:
			forwards = true
		case *expr.Target:
			if e.Name == "DNAT" || e.Name == "REDIRECT" || e.Name == "TPROXY" {
				forwards = true
			}
		}
	}
	if anyAddr {
		f.Addrs = nil
	}
	if anyPort {
		f.Ports = nil
	}
	return f, forwards
}

// setValues reads the elements of the set a lookup names, as [from, to]
// pairs (equal for a single value); false if they cannot be read or are
// concatenations.
func setValues(conn *nftables.Conn, t *nftables.Table, l *expr.Lookup) ([][2][]byte, bool) {
	set, err := conn.GetSetByName(t, l.SetName)
	if err != nil || set.Concatenation || set.IsMap {
		return nil, false
	}
	elems, err := conn.GetSetElements(set)
	if err != nil {
		return nil, false
	}
	var out [][2][]byte
	if !set.Interval {
		for _, e := range elems {
			out = append(out, [2][]byte{e.Key, e.Key})
		}
		return out, true
	}
	// An interval set lists each range as its end (flagged, exclusive)
	// then its start, highest first.
	var end []byte
	for _, e := range elems {
		if e.IntervalEnd {
			end = e.Key
			continue
		}
		to := slices.Clone(e.Key)
		if end != nil {
			to = decrement(end)
		} else {
			for i := range to {
				to[i] = 0xff
			}
		}
		out = append(out, [2][]byte{e.Key, to})
		end = nil
	}
	return out, true
}

// decrement is b - 1 as a big-endian number: the last value before an
// interval's exclusive end.
func decrement(b []byte) []byte {
	out := slices.Clone(b)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]--
		if out[i] != 0xff {
			break
		}
	}
	return out
}
