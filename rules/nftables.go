package rules

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
)

// Names an admin sees in `nft list table inet ftpgate`.
const (
	DefaultTable = "ftpgate"
	SetV4        = "ftp_data_pinholes_v4"
	SetV6        = "ftp_data_pinholes_v6"
	PeersV4      = "ftp_control_peers_v4"
	PeersV6      = "ftp_control_peers_v6"
	// InterfacesSet holds the interfaces of --interface (inline).
	InterfacesSet = "ftp_interfaces"
)

// Config says how the nftables backend sets itself up.
type Config struct {
	Table       string // default DefaultTable
	Mark        uint32 // value set in ct mark on admitted connections
	MarkMask    uint32 // bits of ct mark ftpgate owns
	MaxPinholes uint32 // size of each pinhole set; the kernel refuses more
	MaxPeers    uint32 // size of each peers set (two elements per pair of hosts); default MaxPinholes
	NetNS       int    // network namespace fd; 0 for the current one
	// LogGroup, if not 0, adds `log group N` to the consuming rules so
	// that a ConsumedListener learns when each pinhole was used.
	LogGroup uint16
	// Interfaces, if set, scopes inline capture to them: control traffic
	// on other interfaces is not copied, and data SYNs there not held.
	Interfaces []string
	// NAT, if set, adds the NAT maps and the control proxy's rules.
	NAT    *NATConfig
	Logger *slog.Logger
}

// Nftables is the Backend for the running kernel.
type Nftables struct {
	cfg    Config
	conn   *nftables.Conn
	table  *nftables.Table
	set4   *nftables.Set
	set6   *nftables.Set
	peers4 *nftables.Set
	peers6 *nftables.Set
	// NAT only:
	proxy4, proxy6, dnat4, dnat6, snat4, snat6 *nftables.Set
	// FTPS:
	scoped4, scoped6, active4, active6, sdnat4, sdnat6 *nftables.Set
	// Inline capture: what its rules were built with, and the interfaces set.
	inline *inlineParams
	ifaces *nftables.Set
	opQueue
	log *slog.Logger
}

// Open creates the table, sets and chains, or fails with ErrNoNftables or
// ErrTableBusy. The table lives as long as the returned backend's socket:
// Close removes it, and so does the kernel when the process dies.
//
//	nft add table inet ftpgate { flags owner; }
//	nft add set inet ftpgate ftp_data_pinholes_v4 { type ipv4_addr . ipv4_addr . inet_service; flags dynamic,timeout; size N; }
//	nft add set inet ftpgate ftp_control_peers_v4 { type ipv4_addr . ipv4_addr; flags timeout; size N; }
//	nft add chain inet ftpgate mark_ftp_data_forward { type filter hook forward priority filter - 10; }
//	...
func Open(cfg Config) (*Nftables, error) {
	if cfg.Table == "" {
		cfg.Table = DefaultTable
	}
	if cfg.MaxPinholes == 0 {
		cfg.MaxPinholes = 65536
	}
	if cfg.MaxPeers == 0 {
		cfg.MaxPeers = cfg.MaxPinholes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MarkMask == 0 || cfg.Mark&^cfg.MarkMask != 0 {
		return nil, fmt.Errorf("mark %#x/%#x: value must be non-empty and inside the mask", cfg.Mark, cfg.MarkMask)
	}
	var raw *netlink.Conn
	opts := []nftables.ConnOption{
		nftables.AsLasting(),
		nftables.WithSockOptions(func(c *netlink.Conn) error { raw = c; return nil }),
	}
	if cfg.NetNS != 0 {
		opts = append(opts, nftables.WithNetNSFd(cfg.NetNS))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: opening netlink socket: %v", ErrNoNftables, err)
	}
	n := &Nftables{cfg: cfg, conn: conn, log: cfg.Logger}
	if err := n.setup(raw); err != nil {
		_ = conn.CloseLasting()
		return nil, err
	}
	return n, nil
}

func (n *Nftables) setup(raw *netlink.Conn) error {
	name := n.cfg.Table
	if _, err := n.conn.ListTableOfFamily(name, nftables.TableFamilyINet); err == nil {
		// A table of that name is there. If another process owns it the
		// kernel refuses the deletion; a table nobody owns is a leftover
		// (e.g. created by hand) and is replaced.
		n.conn.DelTable(&nftables.Table{Name: name, Family: nftables.TableFamilyINet})
		if err := n.conn.Flush(); err != nil {
			if errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.EPERM) {
				return fmt.Errorf("table inet %s: %w (is another ftpgate running?)", name, ErrTableBusy)
			}
			return fmt.Errorf("%w: removing stale table inet %s: %v", ErrNoNftables, name, err)
		}
		n.log.Warn("replaced a leftover table nobody owned", "table", "inet "+name)
	} else if errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.EPERM) {
		return fmt.Errorf("%w: listing tables: %v (run as root or with CAP_NET_ADMIN)", ErrNoNftables, err)
	}
	if raw == nil {
		return fmt.Errorf("%w: no netlink socket", ErrNoNftables)
	}
	// nft add table inet NAME { flags owner; }: the table belongs to this
	// socket, only it may change the table, and the kernel deletes the
	// table when the socket closes, even after kill -9.
	n.table = n.conn.AddTable(&nftables.Table{Name: name, Family: nftables.TableFamilyINet, Flags: nftables.TableFlagOwner})
	if err := n.conn.Flush(); err != nil {
		if errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.EPERM) {
			return fmt.Errorf("%w: creating table inet %s: %v (run as root or with CAP_NET_ADMIN)", ErrNoNftables, name, err)
		}
		return fmt.Errorf("%w: creating table inet %s with the owner flag (Linux 5.12 or later): %v", ErrNoNftables, name, err)
	}
	if err := createPinholeSets(raw, name, n.cfg.MaxPinholes); err != nil {
		return fmt.Errorf("%w: %v", ErrNoNftables, err)
	}
	n.initSets()
	if err := n.queueBase(); err != nil {
		return err
	}
	if err := n.conn.Flush(); err != nil {
		return fmt.Errorf("%w: creating sets and chains in table inet %s: %v", ErrNoNftables, name, err)
	}
	return nil
}

// initSets describes the table's four sets.
func (n *Nftables) initSets() {
	n.set4 = n.pinholeSet(SetV4, nftables.TypeIPAddr, 1)
	n.set6 = n.pinholeSet(SetV6, nftables.TypeIP6Addr, 2)
	n.peers4 = n.newPeersSet(PeersV4, nftables.TypeIPAddr, 3)
	n.peers6 = n.newPeersSet(PeersV6, nftables.TypeIP6Addr, 4)
	if n.cfg.NAT != nil {
		n.initNATSets()
	}
	n.initScopedSets()
}

// queueBase queues what every capture needs: the peers sets and the
// chains that mark data connections, with their base rules.
//
//	nft add set inet ftpgate ftp_control_peers_v4 { type ipv4_addr . ipv4_addr; flags timeout; size N; }
//	nft add chain inet ftpgate mark_ftp_data_forward { type filter hook forward priority filter - 10; }
//	...
func (n *Nftables) queueBase() error {
	for _, s := range []*nftables.Set{n.peers4, n.peers6} {
		if err := n.conn.AddSet(s, nil); err != nil {
			return fmt.Errorf("adding set %s: %w", s.Name, err)
		}
	}
	if err := n.queueScopedSets(); err != nil {
		return err
	}
	for _, c := range dataChains {
		chain := n.conn.AddChain(&nftables.Chain{
			Name:     c.name,
			Table:    n.table,
			Type:     nftables.ChainTypeFilter,
			Hooknum:  c.hook,
			Priority: nftables.ChainPriorityRef(nftables.ChainPriority(c.priority)),
		})
		for _, r := range dataChainRules(c, n.params(), chain) {
			n.conn.AddRule(r)
		}
	}
	n.queueConfirm()
	if n.cfg.NAT != nil {
		if err := n.queueNAT(); err != nil {
			return fmt.Errorf("adding the NAT sets: %w", err)
		}
	}
	return nil
}

func (n *Nftables) newPeersSet(name string, addr nftables.SetDatatype, id uint32) *nftables.Set {
	return &nftables.Set{
		ID:            id, // fixed, so that the messages are the same every time
		Table:         n.table,
		Name:          name,
		KeyType:       nftables.MustConcatSetType(addr, addr),
		Concatenation: true,
		HasTimeout:    true,
		Size:          n.cfg.MaxPeers,
		Comment:       "hosts of running FTP control sessions, both ways: a data SYN between them that finds no pinhole waits for ftpgate",
	}
}

// params are the rules' inputs common to every capture.
func (n *Nftables) params() ruleParams {
	p := ruleParams{
		table: n.table, mark: n.cfg.Mark, mask: n.cfg.MarkMask, logGroup: n.cfg.LogGroup,
		set4: n.set4, set6: n.set6, peers4: n.peers4, peers6: n.peers6,
		scoped4: n.scoped4, scoped6: n.scoped6, active4: n.active4, active6: n.active6,
	}
	if n.cfg.NAT != nil {
		p.nat = &natParams{cfg: *n.cfg.NAT, proxy4: n.proxy4, proxy6: n.proxy6,
			dnat4: n.dnat4, dnat6: n.dnat6, snat4: n.snat4, snat6: n.snat6}
	}
	return p
}

// key encodes a pinhole as its set key: peer . addr . port, each field
// padded to a multiple of four bytes as concatenations require.
func key(p Pinhole) []byte {
	var b []byte
	if p.Peer.Is4() {
		b = make([]byte, 0, 12)
		a, c := p.Peer.As4(), p.Addr.As4()
		b = append(append(b, a[:]...), c[:]...)
	} else {
		b = make([]byte, 0, 36)
		a, c := p.Peer.As16(), p.Addr.As16()
		b = append(append(b, a[:]...), c[:]...)
	}
	return append(b, byte(p.Port>>8), byte(p.Port), 0, 0)
}

// peersKeys encodes both directions of a control session's peers.
func peersKeys(p Peers) [][]byte {
	a, b := p.Client.AsSlice(), p.Server.AsSlice()
	ab := append(slices.Clone(a), b...)
	if p.Client == p.Server {
		return [][]byte{ab}
	}
	return [][]byte{ab, append(slices.Clone(b), a...)}
}

func (n *Nftables) setFor(p Pinhole) *nftables.Set {
	if p.Peer.Is4() {
		return n.set4
	}
	return n.set6
}

func (n *Nftables) queue(o op) error {
	if o.m.Peer.IsValid() {
		return n.queueMapping(o)
	}
	if o.scoped != nil {
		return n.queueScoped(o)
	}
	var s *nftables.Set
	var keys [][]byte
	if o.peers.Client.IsValid() {
		s = n.peers4
		if o.peers.Client.Is6() {
			s = n.peers6
		}
		keys = peersKeys(o.peers)
	} else {
		s, keys = n.setFor(o.p), [][]byte{key(o.p)}
	}
	elems := make([]nftables.SetElement, len(keys))
	for i, k := range keys {
		elems[i] = nftables.SetElement{Key: k, Timeout: o.timeout}
	}
	if o.add {
		return n.conn.SetAddElements(s, elems)
	}
	// A short timeout on the stand-in element means that even if the
	// delete were lost, it would not linger.
	for i := range elems {
		elems[i].Timeout = time.Second
	}
	if err := n.conn.SetAddElements(s, elems); err != nil {
		return err
	}
	return n.conn.SetDeleteElements(s, elems)
}

// queueMapping queues the change of a NAT map element. A delete first
// adds the element with a short timeout, like a pinhole's (see
// DelPinhole), so that it cannot fail on an absent element.
func (n *Nftables) queueMapping(o op) error {
	if n.cfg.NAT == nil {
		return fmt.Errorf("NAT mapping %v: NAT is not set up", o.m)
	}
	s := n.mapFor(o.m)
	e := []nftables.SetElement{{Key: mappingKey(o.m), Val: mappingData(o.m), Timeout: o.timeout}}
	if o.add {
		return n.conn.SetAddElements(s, e)
	}
	e[0].Timeout = time.Second
	if err := n.conn.SetAddElements(s, e); err != nil {
		return err
	}
	return n.conn.SetDeleteElements(s, []nftables.SetElement{{Key: e[0].Key}})
}

// Commit sends every queued change in one netlink batch. If the batch
// fails, each change is retried on its own so that one bad element does
// not keep the others out; the first error is returned.
func (n *Nftables) Commit() error { return n.commit(n.take(false)) }

// CommitPeers sends the queued changes of control session peers.
func (n *Nftables) CommitPeers() error { return n.commit(n.take(true)) }

func (n *Nftables) commit(ops []op) error {
	if len(ops) == 0 {
		return nil
	}
	for _, o := range ops {
		if err := n.queue(o); err != nil {
			return fmt.Errorf("queueing %v: %w", o, err)
		}
	}
	err := n.conn.Flush()
	if err == nil || len(ops) == 1 {
		if err != nil {
			return fmt.Errorf("committing %v: %w", ops[0], err)
		}
		return nil
	}
	var first error
	for _, o := range ops {
		if qerr := n.queue(o); qerr != nil {
			return fmt.Errorf("queueing %v: %w", o, qerr)
		}
		if ferr := n.conn.Flush(); ferr != nil && first == nil {
			first = fmt.Errorf("committing %v: %w", o, ferr)
		}
	}
	return first
}

// Pinholes lists the pinholes the kernel holds now.
//
//	nft list set inet ftpgate ftp_data_pinholes_v4
func (n *Nftables) Pinholes() ([]Pinhole, error) {
	var out []Pinhole
	for _, s := range []*nftables.Set{n.set4, n.set6, n.peers4, n.peers6} {
		elems, err := n.conn.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("listing set %s: %w", s.Name, err)
		}
		for _, e := range elems {
			if p, ok := decodeKey(e.Key); ok {
				out = append(out, p)
			}
		}
	}
	return out, nil
}

func decodeKey(k []byte) (Pinhole, bool) {
	switch len(k) {
	case 12:
		return Pinhole{
			Peer: netip.AddrFrom4([4]byte(k[0:4])),
			Addr: netip.AddrFrom4([4]byte(k[4:8])),
			Port: uint16(k[8])<<8 | uint16(k[9]),
		}, true
	case 36:
		return Pinhole{
			Peer: netip.AddrFrom16([16]byte(k[0:16])),
			Addr: netip.AddrFrom16([16]byte(k[16:32])),
			Port: uint16(k[32])<<8 | uint16(k[33]),
		}, true
	}
	return Pinhole{}, false
}

// Close deletes the table (`nft delete table inet ftpgate`) and closes the
// socket. Closing the socket alone would do, thanks to the owner flag; the
// explicit delete makes the removal synchronous and reports errors.
func (n *Nftables) Close() error {
	n.pending = nil
	n.conn.DelTable(n.table)
	err := n.conn.Flush()
	if cerr := n.conn.CloseLasting(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("removing table inet %s: %w", n.cfg.Table, err)
	}
	return nil
}
