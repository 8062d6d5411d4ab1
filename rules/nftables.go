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
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Names an admin sees in `nft list table inet ftpgate`.
const (
	DefaultTable = "ftpgate"
	SetV4        = "ftp_data_pinholes_v4"
	SetV6        = "ftp_data_pinholes_v6"
	PeersV4      = "ftp_control_peers_v4"
	PeersV6      = "ftp_control_peers_v6"
)

// Chain names by hook. Each chain runs just before the default filter
// priority so the mark is set before the admin's own rules test it.
var chainHooks = []struct {
	name string
	hook *nftables.ChainHook
}{
	{"mark_ftp_data_forward", nftables.ChainHookForward},
	{"mark_ftp_data_input", nftables.ChainHookInput},
	{"mark_ftp_data_output", nftables.ChainHookOutput},
}

// ChainPriority is the priority of ftpgate's chains: "filter - 10".
const ChainPriority = -10

// Config says how the nftables backend sets itself up.
type Config struct {
	Table       string // default DefaultTable
	Mark        uint32 // value set in ct mark on admitted connections
	MarkMask    uint32 // bits of ct mark ftpgate owns
	MaxPinholes uint32 // size of each set; the kernel refuses more
	NetNS       int    // network namespace fd; 0 for the current one
	// LogGroup, if not 0, adds `log group N` to the consuming rules so
	// that a ConsumedListener learns when each pinhole was used.
	LogGroup uint16
	Logger   *slog.Logger
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
	if err := createOwnedTable(raw, name); err != nil {
		if errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.EPERM) {
			return fmt.Errorf("%w: %v (run as root or with CAP_NET_ADMIN)", ErrNoNftables, err)
		}
		return fmt.Errorf("%w: %v", ErrNoNftables, err)
	}
	n.table = &nftables.Table{Name: name, Family: nftables.TableFamilyINet}
	n.set4 = n.newSet(SetV4, nftables.TypeIPAddr)
	n.set6 = n.newSet(SetV6, nftables.TypeIP6Addr)
	n.peers4 = n.newPeersSet(PeersV4, nftables.TypeIPAddr)
	n.peers6 = n.newPeersSet(PeersV6, nftables.TypeIP6Addr)
	for _, s := range []*nftables.Set{n.set4, n.set6, n.peers4, n.peers6} {
		if err := n.conn.AddSet(s, nil); err != nil {
			return fmt.Errorf("adding set %s: %w", s.Name, err)
		}
	}
	for _, c := range chainHooks {
		chain := n.conn.AddChain(&nftables.Chain{
			Name:     c.name,
			Table:    n.table,
			Type:     nftables.ChainTypeFilter,
			Hooknum:  c.hook,
			Priority: nftables.ChainPriorityRef(ChainPriority),
		})
		n.conn.AddRule(n.consumeRule(chain, n.set4, 12, 4))
		n.conn.AddRule(n.consumeRule(chain, n.set6, 8, 16))
	}
	if err := n.conn.Flush(); err != nil {
		return fmt.Errorf("%w: creating sets and chains in table inet %s: %v", ErrNoNftables, name, err)
	}
	return nil
}

func (n *Nftables) newSet(name string, addr nftables.SetDatatype) *nftables.Set {
	return &nftables.Set{
		Table:         n.table,
		Name:          name,
		KeyType:       nftables.MustConcatSetType(addr, addr, nftables.TypeInetService),
		Concatenation: true,
		HasTimeout:    true,
		Dynamic:       true,
		Size:          n.cfg.MaxPinholes,
		Comment:       "announced FTP data connections: connecting peer . announced address . announced port",
	}
}

func (n *Nftables) newPeersSet(name string, addr nftables.SetDatatype) *nftables.Set {
	return &nftables.Set{
		Table:         n.table,
		Name:          name,
		KeyType:       nftables.MustConcatSetType(addr, addr),
		Concatenation: true,
		HasTimeout:    true,
		Size:          n.cfg.MaxPinholes,
		Comment:       "hosts of running FTP control sessions, both ways: a data SYN between them that finds no pinhole waits for ftpgate",
	}
}

// consumeRule builds, for one address family (saddr at offset off, len
// alen, daddr right after it):
//
//	tcp flags & (syn | ack) == syn ct state new \
//	  ip saddr . ip daddr . tcp dport @SET \
//	  ct mark set ct mark & ~MASK | MARK \
//	  delete @SET { ip saddr . ip daddr . tcp dport } counter \
//	  log prefix "ftpgate: pinhole used" group LOGGROUP snaplen 128 accept
//
// The lookup and the delete run in the packet path, so a pinhole admits
// one connection no matter how fast its SYN follows the announcement of
// the commit; the ct mark then carries retransmitted SYNs of that very
// connection past the admin's ruleset. The accept ends only ftpgate's
// chain; the admin's chain still decides, by the mark.
func (n *Nftables) consumeRule(chain *nftables.Chain, set *nftables.Set, off, alen uint32) *nftables.Rule {
	nfproto := byte(unix.NFPROTO_IPV4)
	if alen == 16 {
		nfproto = unix.NFPROTO_IPV6
	}
	keyReg := uint32(8) // NFT_REG32_00: concatenations use 32-bit registers
	daddrReg := keyReg + alen/4
	portReg := daddrReg + alen/4
	// NFT_REG_4 (32-bit registers 20-23) lies past the longest key (IPv6:
	// registers 8-16); NFT_REG_1 would overlap the key and corrupt it.
	const markReg = 4
	zero := []byte{0, 0, 0, 0}
	ne := binaryutil.NativeEndian.PutUint32
	exprs := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x12}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x02}},
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: ne(expr.CtStateBitNEW), Xor: zero},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: zero},
		&expr.Payload{DestRegister: keyReg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: alen},
		&expr.Payload{DestRegister: daddrReg, Base: expr.PayloadBaseNetworkHeader, Offset: off + alen, Len: alen},
		&expr.Payload{DestRegister: portReg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: keyReg, SetName: set.Name, SetID: set.ID},
		&expr.Ct{Register: markReg, Key: expr.CtKeyMARK},
		&expr.Bitwise{SourceRegister: markReg, DestRegister: markReg, Len: 4, Mask: ne(^n.cfg.MarkMask), Xor: ne(n.cfg.Mark)},
		&expr.Ct{Register: markReg, Key: expr.CtKeyMARK, SourceRegister: true},
		&expr.Dynset{SrcRegKey: keyReg, SetName: set.Name, SetID: set.ID, Operation: dynsetOpDelete},
		&expr.Counter{},
	}
	if n.cfg.LogGroup != 0 {
		exprs = append(exprs, &expr.Log{
			Key:     1<<unix.NFTA_LOG_PREFIX | 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_SNAPLEN,
			Data:    []byte(LogPrefixUsed),
			Group:   n.cfg.LogGroup,
			Snaplen: consumedSnaplen,
		})
	}
	exprs = append(exprs, &expr.Verdict{Kind: expr.VerdictAccept})
	return &nftables.Rule{
		Table:    n.table,
		Chain:    chain,
		Exprs:    exprs,
		UserData: userdata.AppendString(nil, userdata.TypeComment, "first packet of an announced FTP data connection: mark it, close the pinhole"),
	}
}

// dynsetOpDelete is NFT_DYNSET_OP_DELETE (Linux 5.14).
const dynsetOpDelete = 2

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

// Commit sends every queued change in one netlink batch. If the batch
// fails, each change is retried on its own so that one bad element does
// not keep the others out; the first error is returned.
func (n *Nftables) Commit() error {
	if len(n.pending) == 0 {
		return nil
	}
	ops := n.pending
	n.pending = n.pending[:0]
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
	n.peers4 = n.newPeersSet(PeersV4, nftables.TypeIPAddr)
	n.peers6 = n.newPeersSet(PeersV6, nftables.TypeIP6Addr)
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
