package rules

import (
	"fmt"
	"log/slog"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
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

// Nftables is the Backend for the running kernel, and the front door of
// the package: it owns the netlink socket and hands each job to its part,
// the sets (tableSets), the chains (chains) and the commits (committer).
type Nftables struct {
	cfg    Config
	conn   *nftables.Conn
	table  *nftables.Table
	sets   *tableSets
	chains *chains
	committer
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
	conn, err := lastingConn(cfg.NetNS, nftables.WithSockOptions(func(c *netlink.Conn) error { raw = c; return nil }))
	if err != nil {
		return nil, err
	}
	n, err := setup(cfg, conn, func() *netlink.Conn { return raw })
	if err != nil {
		_ = conn.CloseLasting()
		return nil, err
	}
	return n, nil
}

// setup creates the table and everything in it on conn. raw returns the
// socket under conn, known once conn has been used.
func setup(cfg Config, conn *nftables.Conn, raw func() *netlink.Conn) (*Nftables, error) {
	if err := replaceLeftoverTable(conn, cfg.Table, cfg.Logger); err != nil {
		return nil, err
	}
	if raw() == nil {
		return nil, fmt.Errorf("%w: no netlink socket", ErrNoNftables)
	}
	table, err := addOwnedTable(conn, cfg.Table)
	if err != nil {
		return nil, err
	}
	if err := createPinholeSets(raw(), cfg.Table, cfg.MaxPinholes); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoNftables, err)
	}
	var keep *keptTable
	if cfg.NAT != nil && cfg.NAT.Packet {
		keep = newKeptTable(cfg.Table+NATTableSuffix, cfg.MaxPeers)
		keep.find(conn)
	}
	n := newNftables(cfg, conn, table, keep)
	if err := n.queueBase(); err != nil {
		return nil, err
	}
	if err := conn.Flush(); err != nil {
		return nil, fmt.Errorf("%w: creating sets and chains in table inet %s: %v", ErrNoNftables, cfg.Table, err)
	}
	return n, nil
}

// newNftables wires the parts of a backend for table on conn; it sends
// nothing.
func newNftables(cfg Config, conn *nftables.Conn, table *nftables.Table, keep *keptTable) *Nftables {
	n := &Nftables{cfg: cfg, conn: conn, table: table, log: cfg.Logger}
	n.sets = newTableSets(table, n.cfg)
	n.chains = &chains{conn: conn, table: table, kept: keep, cfg: &n.cfg, sets: n.sets}
	n.committer = committer{conn: conn, queue: n.sets.queue}
	return n
}

// queueBase queues what every capture needs: the peers and scoped sets,
// the chains that mark data connections, with their base rules, the
// confirm chains, and with NAT its maps and chains.
//
//	nft add set inet ftpgate ftp_control_peers_v4 { type ipv4_addr . ipv4_addr; flags timeout; size N; }
//	nft add chain inet ftpgate mark_ftp_data_forward { type filter hook forward priority filter - 10; }
//	...
func (n *Nftables) queueBase() error {
	if err := n.sets.peers.add(n.conn); err != nil {
		return err
	}
	if err := n.sets.scoped.add(n.conn); err != nil {
		return err
	}
	n.chains.queueScopedDNAT()
	n.chains.queueMarkChains()
	n.chains.queueConfirm()
	if n.sets.nat != nil {
		if err := n.sets.nat.add(n.conn); err != nil {
			return fmt.Errorf("adding the NAT sets: %w", err)
		}
		n.chains.queueNAT()
	}
	return nil
}

// AddInlineRules sets up inline capture; see chains.addInline.
func (n *Nftables) AddInlineRules(num, logGroup uint16, ports []uint16) (QueueMode, error) {
	return n.chains.addInline(num, logGroup, ports)
}

// SetControlPorts changes, in one transaction, the control ports whose
// traffic the inline rules copy and hold, and those the NAT rules hand
// to the control proxy (a reload).
func (n *Nftables) SetControlPorts(ports []uint16) error { return n.chains.setControlPorts(ports) }

// Pinholes lists the pinholes the kernel holds now.
//
//	nft list set inet ftpgate ftp_data_pinholes_v4
func (n *Nftables) Pinholes() ([]Pinhole, error) { return n.sets.listPinholes(n.conn) }

// CheckRuleset reads the ruleset and returns the admin's filter chains
// that would drop what ftpgate admits; see checkRuleset.
//
//	nft list ruleset
func (n *Nftables) CheckRuleset() ([]RulesetProblem, error) {
	return checkRuleset(n.conn, n.cfg.Table, n.cfg.Mark, n.cfg.MarkMask)
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
