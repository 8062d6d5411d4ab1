package rules

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// ScopedRange admits, for the life of one encrypted control session
// (FTPS), new TCP connections from Client to Server's passive ports
// Lo-Hi: the announcements are inside TLS, so the exact port is unknown,
// but the range is open to this client and this server only, and only
// while the session lives. With Active, it admits instead connections
// from Server's port 989 (implicit FTPS's ftp-data) to Client's ports
// Lo-Hi, the range its active mode listens on. With Public set (a server
// behind a port forward), connections to Public's ports Lo-Hi are also
// mapped to Server.
type ScopedRange struct {
	Client, Server netip.Addr
	Lo, Hi         uint16
	Active         bool
	Public         netip.Addr
}

func (r ScopedRange) String() string {
	if r.Active {
		return fmt.Sprintf("%s:989 -> %s:%d-%d", r.Server, r.Client, r.Lo, r.Hi)
	}
	s := fmt.Sprintf("%s -> %s:%d-%d", r.Client, r.Server, r.Lo, r.Hi)
	if r.Public.IsValid() {
		s += fmt.Sprintf(" (via %s)", r.Public)
	}
	return s
}

// Valid reports whether the range is of one family and not empty.
func (r ScopedRange) Valid() bool {
	ok := r.Client.IsValid() && r.Server.IsValid() && r.Client.Is4() == r.Server.Is4() &&
		r.Client.Zone() == "" && r.Server.Zone() == ""
	if r.Public.IsValid() {
		ok = ok && r.Public.Is4() == r.Client.Is4() && !r.Active
	}
	return ok && r.Lo != 0 && r.Lo <= r.Hi
}

// ErrInvalidScoped is returned for a scoped range that mixes families or
// is empty.
var ErrInvalidScoped = errors.New("invalid scoped range")

// AddScoped queues `nft add element inet ftpgate ftps_ranges_v4 { CLIENT . SERVER . LO-HI }`
// (ftps_active_v4 { SERVER . CLIENT . LO-HI } for Active; and the mapping
// in ftps_dnat_v4 with Public).
func (q *opQueue) AddScoped(r ScopedRange) error { return q.enqueue(newScopedOp(r, true)) }

// DelScoped queues its removal, idempotent like DelPinhole.
func (q *opQueue) DelScoped(r ScopedRange) error { return q.enqueue(newScopedOp(r, false)) }

func newScopedOp(r ScopedRange, add bool) (op, error) {
	if !r.Valid() {
		return op{}, fmt.Errorf("scoped range %v: %w", r, ErrInvalidScoped)
	}
	return op{scoped: &r, add: add}, nil
}

// Names of the FTPS sets.
const (
	ScopedV4       = "ftps_ranges_v4"
	ScopedV6       = "ftps_ranges_v6"
	ScopedActiveV4 = "ftps_active_v4"
	ScopedActiveV6 = "ftps_active_v6"
	ScopedDNATV4   = "ftps_dnat_v4"
	ScopedDNATV6   = "ftps_dnat_v6"
)

// ftpsDataPort is implicit FTPS's data port (ftps-data), from which an
// implicit FTPS server connects in active mode.
const ftpsDataPort = 989

func (n *Nftables) initScopedSets() {
	mk := func(name string, addr nftables.SetDatatype, id uint32, interval bool, comment string) *nftables.Set {
		return &nftables.Set{ID: id, Table: n.table, Name: name,
			KeyType:       nftables.MustConcatSetType(addr, addr, nftables.TypeInetService),
			Concatenation: true, Interval: interval, Comment: comment}
	}
	const rc = "encrypted FTP sessions (FTPS): client . server . the server's passive ports, while the session lives"
	const ac = "implicit FTPS in active mode: server . client . the client's active ports, from port 989, while the session lives"
	n.scoped4 = mk(ScopedV4, nftables.TypeIPAddr, 12, true, rc)
	n.scoped6 = mk(ScopedV6, nftables.TypeIP6Addr, 13, true, rc)
	n.active4 = mk(ScopedActiveV4, nftables.TypeIPAddr, 14, true, ac)
	n.active6 = mk(ScopedActiveV6, nftables.TypeIP6Addr, 15, true, ac)
	if n.cfg.NAT != nil {
		const dc = "FTPS through a port forward: client . public address . passive ports : server"
		n.sdnat4 = mk(ScopedDNATV4, nftables.TypeIPAddr, 16, true, dc)
		n.sdnat4.IsMap, n.sdnat4.DataType = true, nftables.TypeIPAddr
		n.sdnat6 = mk(ScopedDNATV6, nftables.TypeIP6Addr, 17, true, dc)
		n.sdnat6.IsMap, n.sdnat6.DataType = true, nftables.TypeIP6Addr
	}
}

func (n *Nftables) queueScopedSets() error {
	for _, s := range []*nftables.Set{n.scoped4, n.scoped6, n.active4, n.active6, n.sdnat4, n.sdnat6} {
		if s == nil {
			continue
		}
		if err := n.conn.AddSet(s, nil); err != nil {
			return fmt.Errorf("adding set %s: %w", s.Name, err)
		}
	}
	if n.sdnat4 != nil {
		chain := n.conn.AddChain(&nftables.Chain{Name: "nat_ftps_data_dnat", Table: n.table, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(DNATChainPriority)})
		for _, v6 := range []bool{false, true} {
			m, alen, fam := n.sdnat4, uint32(4), uint32(unix.NFPROTO_IPV4)
			if v6 {
				m, alen, fam = n.sdnat6, 16, unix.NFPROTO_IPV6
			}
			n.conn.AddRule(&nftables.Rule{Table: n.table, Chain: chain, Exprs: slices.Concat(tcp(), synOnly(), nfproto(v6), addrPair(v6), []expr.Any{
				&expr.Payload{DestRegister: keyReg + 2*alen/4, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Lookup{SourceRegister: keyReg, SetName: m.Name, SetID: m.ID, DestRegister: 1, IsDestRegSet: true},
				&expr.NAT{Type: expr.NATTypeDestNAT, Family: fam, RegAddrMin: 1},
			})})
		}
	}
	return nil
}

// scopedExprs admit a new connection within an FTPS session's scope:
//
//	meta nfproto ipv4 ct state new ip saddr . ip daddr . tcp dport @ftps_ranges_v4 \
//	  ct mark set ct mark & ~MASK | MARK counter accept
//	meta nfproto ipv4 ct state new tcp sport 989 ip saddr . ip daddr . tcp dport @ftps_active_v4 \
//	  ct mark set ct mark & ~MASK | MARK counter accept
//
// Unlike a pinhole, the element is not consumed: a session opens a data
// connection per transfer, and the element goes when the session ends.
// Active mode is matched on both ports: from implicit FTPS's data port,
// to the client's configured active range, never to any port of it.
func scopedExprs(p ruleParams, v6, active bool) []expr.Any {
	set, alen := p.scoped4, uint32(4)
	if active {
		set = p.active4
	}
	if v6 {
		set, alen = p.scoped6, 16
		if active {
			set = p.active6
		}
	}
	var from989 []expr.Any
	if active {
		from989 = portIs(0, ftpsDataPort)
	}
	const markReg = 4
	return slices.Concat(nfproto(v6), ctState(expr.CtStateBitNEW, expr.CmpOpNeq), from989, addrPair(v6), []expr.Any{
		&expr.Payload{DestRegister: keyReg + 2*alen/4, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: keyReg, SetName: set.Name, SetID: set.ID},
		&expr.Ct{Register: markReg, Key: expr.CtKeyMARK},
		&expr.Bitwise{SourceRegister: markReg, DestRegister: markReg, Len: 4, Mask: ne32(^p.mask), Xor: ne32(p.mark)},
		&expr.Ct{Register: markReg, Key: expr.CtKeyMARK, SourceRegister: true},
		&expr.Counter{},
		accept,
	})
}

// queueScoped queues the elements of a scoped range.
func (n *Nftables) queueScoped(o op) error {
	r := *o.scoped
	pad := func(port uint16) []byte { return []byte{byte(port >> 8), byte(port), 0, 0} }
	pair := func(a, b netip.Addr) []byte { return append(a.AsSlice(), b.AsSlice()...) }
	var set *nftables.Set
	var e nftables.SetElement
	if r.Active {
		set = n.active4
		if r.Client.Is6() {
			set = n.active6
		}
		e = nftables.SetElement{Key: append(pair(r.Server, r.Client), pad(r.Lo)...), KeyEnd: append(pair(r.Server, r.Client), pad(r.Hi)...)}
	} else {
		set = n.scoped4
		if r.Client.Is6() {
			set = n.scoped6
		}
		e = nftables.SetElement{Key: append(pair(r.Client, r.Server), pad(r.Lo)...), KeyEnd: append(pair(r.Client, r.Server), pad(r.Hi)...)}
	}
	elems := []struct {
		s *nftables.Set
		e nftables.SetElement
	}{{set, e}}
	if r.Public.IsValid() {
		if n.sdnat4 == nil {
			return fmt.Errorf("scoped range %v: NAT is not set up", r)
		}
		m := n.sdnat4
		if r.Client.Is6() {
			m = n.sdnat6
		}
		elems = append(elems, struct {
			s *nftables.Set
			e nftables.SetElement
		}{m, nftables.SetElement{Key: append(pair(r.Client, r.Public), pad(r.Lo)...),
			KeyEnd: append(pair(r.Client, r.Public), pad(r.Hi)...), Val: r.Server.AsSlice()}})
	}
	for _, x := range elems {
		// Interval sets have no element timeouts: a delete of an absent
		// element would fail the batch, so it is added first (a no-op if
		// present), then deleted.
		if err := n.conn.SetAddElements(x.s, []nftables.SetElement{x.e}); err != nil {
			return err
		}
		if !o.add {
			if err := n.conn.SetDeleteElements(x.s, []nftables.SetElement{x.e}); err != nil {
				return err
			}
		}
	}
	return nil
}
