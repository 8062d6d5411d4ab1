package rules

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// PortForward is a rule of the admin's that sends TCP connections to
// some addresses and ports elsewhere: a destination NAT (dnat,
// redirect, the xtables DNAT and REDIRECT targets) or a tproxy. Addrs
// and Ports are what its matches say, or, for a rule in a chain that
// other rules jump to (as kube-proxy and Docker write them), what the
// jumping rules' matches say; empty means any, which is also what a
// match ftpgate cannot read counts as.
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

// matches is what a rule (or the rules leading to its chain) matches of
// a connection's destination: nil slices with set false mean no match,
// which is any.
type matches struct {
	addrs            []netip.Prefix
	ports            [][2]uint16
	addrSet, portSet bool // the rule matches on it (readable or not)
}

// readRule is what one rule says.
type readRule struct {
	m        matches
	forwards bool
	jumps    []jumpTo // chains it hands connections to
}

type jumpTo struct {
	chain string
	extra matches // a verdict map's key for this target
}

func portForwards(conn *nftables.Conn, own string) ([]PortForward, error) {
	chains, err := readChains(conn, own)
	if err != nil {
		return nil, err
	}
	reached := reachedFrom(chains)
	var out []PortForward
	for _, cr := range chains {
		k := chainKey(cr.c.Table, cr.c.Name)
		for _, r := range cr.rules {
			if !r.forwards {
				continue
			}
			for _, m := range reached.paths(k, 0, map[string]bool{}) {
				m = narrow(m, r.m)
				out = append(out, PortForward{Table: cr.c.Table.Name, Chain: cr.c.Name, Addrs: m.addrs, Ports: m.ports})
			}
		}
	}
	return out, nil
}

// chainRules are a chain and what its rules say.
type chainRules struct {
	c     *nftables.Chain
	rules []readRule
}

// readChains reads every chain of every table but own.
func readChains(conn *nftables.Conn, own string) ([]*chainRules, error) {
	chains, err := conn.ListChains()
	if err != nil {
		return nil, fmt.Errorf("listing chains: %w", err)
	}
	var out []*chainRules
	for _, c := range chains {
		if c.Table.Name == own {
			continue
		}
		rules, err := conn.GetRules(c.Table, c)
		if err != nil {
			return nil, fmt.Errorf("listing the rules of chain %s: %w", c.Name, err)
		}
		cr := &chainRules{c: c}
		for _, r := range rules {
			cr.rules = append(cr.rules, readOne(conn, c.Table, r))
		}
		out = append(out, cr)
	}
	return out, nil
}

// reached is what reaches each chain: the matches of the rules that jump
// to it, and from which chain.
type reached map[string][]reachedBy

type reachedBy struct {
	from string
	m    matches
}

func reachedFrom(chains []*chainRules) reached {
	in := reached{}
	for _, cr := range chains {
		from := chainKey(cr.c.Table, cr.c.Name)
		for _, r := range cr.rules {
			for _, j := range r.jumps {
				k := chainKey(cr.c.Table, j.chain)
				in[k] = append(in[k], reachedBy{from, narrow(r.m, j.extra)})
			}
		}
	}
	return in
}

// paths lists what may reach a chain, through up to eight jumps.
func (in reached) paths(k string, depth int, seen map[string]bool) []matches {
	if len(in[k]) == 0 || depth > 8 || seen[k] {
		return []matches{{}} // a base chain, or too deep: anything
	}
	seen[k] = true
	defer delete(seen, k)
	var out []matches
	for _, e := range in[k] {
		for _, up := range in.paths(e.from, depth+1, seen) {
			out = append(out, narrow(up, e.m))
		}
	}
	return out
}

// narrow is what matches b within a: b's match where it has one, else
// a's.
func narrow(a, b matches) matches {
	if b.addrSet {
		a.addrs, a.addrSet = b.addrs, true
	}
	if b.portSet {
		a.ports, a.portSet = b.ports, true
	}
	return a
}

// readOne reads one rule: what it matches, whether it forwards, and
// which chains it jumps to.
func readOne(conn *nftables.Conn, t *nftables.Table, r *nftables.Rule) readRule {
	rd := ruleReader{conn: conn, table: t, regs: map[uint32]reg{}}
	for _, e := range r.Exprs {
		rd.read(e)
	}
	if rd.anyAddr {
		rd.out.m.addrs = nil
	}
	if rd.anyPort {
		rd.out.m.ports = nil
	}
	return rd.out
}

// What a register holds: a destination address (with the prefix a mask
// left of it) or port.
const (
	regNone = iota
	regDaddr
	regDport
)

type reg struct {
	kind, bits int
}

// ruleReader follows a rule's expressions through the registers.
type ruleReader struct {
	conn  *nftables.Conn
	table *nftables.Table
	regs  map[uint32]reg
	// A match on the address or port that cannot be read: counted as any.
	anyAddr, anyPort bool
	out              readRule
}

func (rd *ruleReader) read(e expr.Any) {
	switch e := e.(type) {
	case *expr.Payload:
		rd.payload(e)
	case *expr.Bitwise:
		rd.bitwise(e)
	case *expr.Cmp:
		rd.cmp(e)
	case *expr.Range:
		rd.portRange(e)
	case *expr.Lookup:
		rd.lookup(e)
	case *expr.Match:
		rd.xtMatch(e)
	case *expr.NAT:
		if e.Type == expr.NATTypeDestNAT {
			rd.out.forwards = true
		}
	case *expr.Redir, *expr.TProxy:
		rd.out.forwards = true
	case *expr.Target:
		if e.Name == "DNAT" || e.Name == "REDIRECT" || e.Name == "TPROXY" {
			rd.out.forwards = true
		}
	case *expr.Verdict:
		if e.Kind == expr.VerdictJump || e.Kind == expr.VerdictGoto {
			rd.out.jumps = append(rd.out.jumps, jumpTo{chain: e.Chain})
		}
	}
}

// unreadable notes a match on what register g holds that cannot be read.
func (rd *ruleReader) unreadable(g reg) {
	rd.anyAddr, rd.anyPort = rd.anyAddr || g.kind == regDaddr, rd.anyPort || g.kind == regDport
}

// payload: ip daddr, ip6 daddr, th dport.
func (rd *ruleReader) payload(e *expr.Payload) {
	switch {
	case e.Base == expr.PayloadBaseNetworkHeader && e.Offset == 16 && e.Len == 4:
		rd.regs[e.DestRegister] = reg{regDaddr, 32}
	case e.Base == expr.PayloadBaseNetworkHeader && e.Offset == 24 && e.Len == 16:
		rd.regs[e.DestRegister] = reg{regDaddr, 128}
	case e.Base == expr.PayloadBaseTransportHeader && e.Offset == 2 && e.Len == 2:
		rd.regs[e.DestRegister] = reg{regDport, 16}
	default:
		rd.regs[e.DestRegister] = reg{}
	}
}

// bitwise: ip daddr 203.0.113.0/28 is a mask of leading ones before the
// compare.
func (rd *ruleReader) bitwise(e *expr.Bitwise) {
	g := rd.regs[e.SourceRegister]
	if g.kind != regDaddr {
		rd.regs[e.DestRegister] = reg{}
		if g.kind == regDport {
			rd.anyPort = true
		}
		return
	}
	ones := 0
	for _, b := range e.Mask {
		ones += bits.OnesCount8(b)
	}
	rd.regs[e.DestRegister] = reg{regDaddr, ones}
}

// cmp: ip daddr == A, th dport == P.
func (rd *ruleReader) cmp(e *expr.Cmp) {
	g := rd.regs[e.Register]
	if g.kind == regNone {
		return
	}
	if e.Op != expr.CmpOpEq {
		rd.unreadable(g)
		return
	}
	switch g.kind {
	case regDaddr:
		rd.out.m.addrSet = true
		if a, ok := netip.AddrFromSlice(e.Data); ok {
			if p, err := a.Prefix(g.bits); err == nil {
				rd.out.m.addrs = append(rd.out.m.addrs, p)
			}
		}
	case regDport:
		rd.out.m.portSet = true
		if len(e.Data) == 2 {
			p := binary.BigEndian.Uint16(e.Data)
			rd.out.m.ports = append(rd.out.m.ports, [2]uint16{p, p})
		}
	}
}

// portRange: th dport LO-HI.
func (rd *ruleReader) portRange(e *expr.Range) {
	if g := rd.regs[e.Register]; g.kind != regDport {
		return
	}
	rd.out.m.portSet = true
	if e.Op == expr.CmpOpEq && len(e.FromData) == 2 && len(e.ToData) == 2 {
		rd.out.m.ports = append(rd.out.m.ports, [2]uint16{binary.BigEndian.Uint16(e.FromData), binary.BigEndian.Uint16(e.ToData)})
	} else {
		rd.anyPort = true
	}
}

// lookup: ip daddr @SET, th dport { ... }, and verdict maps, whose
// elements each lead to their chain.
func (rd *ruleReader) lookup(e *expr.Lookup) {
	g := rd.regs[e.SourceRegister]
	if g.kind == regNone {
		return
	}
	elems, ok := setValues(rd.conn, rd.table, e)
	if !ok || e.Invert {
		rd.unreadable(g)
		return
	}
	for _, v := range elems {
		m := rd.elementMatches(g, v)
		if v.jump != "" {
			rd.out.jumps = append(rd.out.jumps, jumpTo{chain: v.jump, extra: m})
			continue
		}
		rd.out.m.addrSet = rd.out.m.addrSet || m.addrSet
		rd.out.m.portSet = rd.out.m.portSet || m.portSet
		rd.out.m.addrs = append(rd.out.m.addrs, m.addrs...)
		rd.out.m.ports = append(rd.out.m.ports, m.ports...)
	}
}

// elementMatches is what one set element matches of what register g holds.
func (rd *ruleReader) elementMatches(g reg, v setValue) matches {
	var m matches
	switch {
	case g.kind == regDport && len(v.from) == 2:
		m.portSet, m.ports = true, [][2]uint16{{binary.BigEndian.Uint16(v.from), binary.BigEndian.Uint16(v.to)}}
	case g.kind == regDaddr:
		m.addrSet = true
		if lo, ok := netip.AddrFromSlice(v.from); ok {
			if hi, ok := netip.AddrFromSlice(v.to); ok && hi != lo {
				rd.anyAddr = true // an address range: counted as any
			} else {
				m.addrs = []netip.Prefix{netip.PrefixFrom(lo, lo.BitLen())}
			}
		}
	}
	return m
}

// xtMatch: the xtables tcp match's destination ports (iptables-nft).
func (rd *ruleReader) xtMatch(e *expr.Match) {
	tcp, ok := e.Info.(*xt.Tcp)
	if !ok {
		return
	}
	rd.out.m.portSet = true
	if tcp.InvFlags != 0 {
		rd.anyPort = true
	} else if tcp.DstPorts != [2]uint16{0, 0xffff} {
		rd.out.m.ports = append(rd.out.m.ports, tcp.DstPorts)
	} else {
		rd.anyPort = true
	}
}

// setValue is one element of a set or map a lookup names: from and to
// (equal for a single value), and for a verdict map the chain it jumps
// to.
type setValue struct {
	from, to []byte
	jump     string
}

// setValues reads the elements of the set or map a lookup names; false
// if they cannot be read or are concatenations.
func setValues(conn *nftables.Conn, t *nftables.Table, l *expr.Lookup) ([]setValue, bool) {
	set, err := conn.GetSetByName(t, l.SetName)
	if err != nil || set.Concatenation {
		return nil, false
	}
	elems, err := conn.GetSetElements(set)
	if err != nil {
		return nil, false
	}
	jump := func(e nftables.SetElement) string {
		if v := e.VerdictData; v != nil && (v.Kind == expr.VerdictJump || v.Kind == expr.VerdictGoto) {
			return v.Chain
		}
		if set.IsMap && set.DataType.Name == "verdict" {
			return verdictChain(e.Val)
		}
		return ""
	}
	var out []setValue
	if !set.Interval {
		for _, e := range elems {
			out = append(out, setValue{from: e.Key, to: e.Key, jump: jump(e)})
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
		out = append(out, setValue{from: e.Key, to: to, jump: jump(e)})
		end = nil
	}
	return out, true
}

// verdictChain reads the chain a verdict map element jumps to from its
// raw data (NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN), which the library
// leaves unparsed for anonymous maps.
func verdictChain(b []byte) string {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return ""
	}
	var code int32
	chain := ""
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_VERDICT_CODE:
			code = int32(binary.BigEndian.Uint32(ad.Bytes()))
		case unix.NFTA_VERDICT_CHAIN:
			chain = ad.String()
		}
	}
	if code == unix.NFT_JUMP || code == unix.NFT_GOTO {
		return chain
	}
	return ""
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
