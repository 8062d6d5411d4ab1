package rules

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Feature is one piece of nf_tables that ftpgate's table uses.
type Feature int

const (
	// FeatureOwner is the table owner flag: the table belongs to ftpgate's
	// socket and goes with it, even after kill -9.
	FeatureOwner Feature = iota
	// FeatureSetLimit is a stateful expression on a set's elements (the
	// one-packet limit that makes a pinhole admit one SYN).
	FeatureSetLimit
	// FeatureDynsetDelete deletes a set element from the packet path (a
	// pinhole closes as the SYN it admitted passes).
	FeatureDynsetDelete
	// FeatureInnerHeader is the @ih payload base: the first byte after
	// the TCP header, which only segments that carry data have.
	FeatureInnerHeader
	// FeatureFib is the fib expression (the reverse-path check of copied
	// control segments).
	FeatureFib
	// FeatureQueue is nft's native queue statement (nft_queue).
	FeatureQueue
	// FeatureXtQueue is the xtables NFQUEUE target through nft_compat,
	// the other way to hold a packet for the daemon.
	FeatureXtQueue
	// FeatureTProxy is nft's tproxy statement (the NAT control proxy).
	FeatureTProxy
	// FeatureSocket is nft's socket expression (the proxy's own
	// connections are told by their transparent socket).
	FeatureSocket
	// FeatureNAT is a nat chain in an inet table with dnat (the NAT
	// mappings of announced data connections).
	FeatureNAT
	// NumFeatures is how many there are.
	NumFeatures
)

// Since is the first Linux version that has the feature.
func (f Feature) Since() string {
	// fib: the iif flag in the forward and input hooks came with the
	// "reverse path filter for policy-based routing on iif" change (5.19
	// by the kernel's history; 5.10 refuses it, no kernel in between was
	// booted here).
	return [...]string{"5.12", "5.11", "5.14", "5.16", "5.19", "4.2", "4.2", "4.19", "4.19", "5.2"}[f]
}

// Config is the kernel configuration option that builds the feature.
func (f Feature) Config() string {
	return [...]string{"CONFIG_NF_TABLES", "CONFIG_NFT_LIMIT", "CONFIG_NF_TABLES", "CONFIG_NF_TABLES",
		"CONFIG_NFT_FIB_INET", "CONFIG_NFT_QUEUE", "CONFIG_NFT_COMPAT and CONFIG_NETFILTER_XT_TARGET_NFQUEUE", "CONFIG_NFT_TPROXY",
		"CONFIG_NFT_SOCKET", "CONFIG_NFT_NAT"}[f]
}

// String is the feature as nft spells it.
func (f Feature) String() string {
	return [...]string{
		"the table owner flag", "set element limits", "set element deletion from the packet path",
		"@ih payload matches", "fib in the forward and input hooks", "nft queue", "the xtables NFQUEUE target (nft_compat)", "tproxy",
		"socket", "inet nat",
	}[f]
}

// Features says which Feature the running kernel has.
type Features struct {
	have   [NumFeatures]bool
	errors [NumFeatures]error
}

// Has reports whether the kernel took the feature.
func (fs Features) Has(f Feature) bool { return fs.have[f] }

// Err is what the kernel answered when it refused the feature.
func (fs Features) Err(f Feature) error { return fs.errors[f] }

// Set records the kernel's answer to a probe of f: nil when it took it.
func (fs *Features) Set(f Feature, err error) { fs.have[f], fs.errors[f] = err == nil, err }

// String lists the features, "fib yes, nft queue no, ...".
func (fs Features) String() string {
	var b strings.Builder
	for f := range NumFeatures {
		if f > 0 {
			b.WriteString(", ")
		}
		b.WriteString(f.String())
		if fs.have[f] {
			b.WriteString(" yes")
		} else {
			b.WriteString(" no")
		}
	}
	return b.String()
}

// ErrMissingFeature is wrapped by Require's errors.
var ErrMissingFeature = errors.New("the kernel lacks a feature ftpgate needs")

// Require returns an error naming the first feature of want the kernel
// lacks, with the Linux version that has it and what the kernel said.
func (fs Features) Require(want ...Feature) error {
	for _, f := range want {
		if !fs.have[f] {
			return fmt.Errorf("%w: %s (Linux %s or later, %s; the kernel answered: %v)", ErrMissingFeature, f, f.Since(), f.Config(), fs.errors[f])
		}
	}
	return nil
}

// probeTablePrefix names the throwaway table the probes build in,
// followed by the process ID: two probes at once (a run starting while
// `ftpgate kernel` runs) never share one, and a table of that name
// that is not this process's is never touched.
const probeTablePrefix = "ftpgate_probe_"

// ProbeKernel asks the kernel, in the network namespace netns (0: the
// current one), which Features it has, by building each in a throwaway
// table of its own:
//
//	nft add table inet ftpgate_probe { flags owner; }
//	nft add chain inet ftpgate_probe forward { type filter hook forward priority 0; }
//	nft add chain inet ftpgate_probe prerouting { type filter hook prerouting priority -150; }
//	nft add rule inet ftpgate_probe forward meta nfproto 255 @ih,0,8 ...   (one rule per feature)
//
// Every rule starts with a match no packet passes (meta nfproto is ipv4
// or ipv6 in an inet table), so a probe never touches traffic; the table
// is deleted at the end, and with the owner flag the kernel deletes it
// anyway when the socket closes. An error means the probe itself could
// not run (no nf_tables, no permission), not that a feature is missing.
func ProbeKernel(netns int) (Features, error) {
	var fs Features
	var raw *netlink.Conn
	conn, err := lastingConn(netns, nftables.WithSockOptions(func(c *netlink.Conn) error { raw = c; return nil }))
	if err != nil {
		return fs, err
	}
	defer conn.CloseLasting()
	p := prober{conn: conn, raw: raw, fs: &fs, name: fmt.Sprintf("%s%d", probeTablePrefix, os.Getpid())}
	if err := p.createTable(); err != nil {
		return fs, err
	}
	defer func() {
		conn.DelTable(p.table)
		_ = conn.Flush()
	}()
	if err := p.createChainsAndSets(); err != nil {
		return fs, err
	}
	p.probeRules()
	return fs, nil
}

// prober builds ProbeKernel's table, and records what the kernel took.
type prober struct {
	conn                *nftables.Conn
	raw                 *netlink.Conn // conn's socket, for the hand-made set messages
	fs                  *Features
	name                string
	table               *nftables.Table
	forward, prerouting *nftables.Chain
	nat                 *nftables.Chain // nil when the kernel refused it
	peers               *nftables.Set
}

// createTable probes the owner flag with the table itself.
func (p *prober) createTable() error {
	p.table = &nftables.Table{Name: p.name, Family: nftables.TableFamilyINet, Flags: nftables.TableFlagOwner}
	p.conn.AddTable(p.table)
	p.fs.Set(FeatureOwner, p.conn.Flush())
	if p.fs.Has(FeatureOwner) {
		return nil
	}
	// The rest can still be probed in a table without the flag.
	p.table.Flags = 0
	p.conn.AddTable(p.table)
	if err := p.conn.Flush(); err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("%w: creating table inet %s: %v (run as root or with CAP_NET_ADMIN)", ErrNoNftables, p.name, err)
		}
		return fmt.Errorf("%w: creating table inet %s: %v", ErrNoNftables, p.name, err)
	}
	return nil
}

// createChainsAndSets makes what the rule probes need, and probes the
// set limit with the very sets ftpgate creates.
func (p *prober) createChainsAndSets() error {
	p.forward = p.conn.AddChain(&nftables.Chain{
		Name: "forward", Table: p.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter,
	})
	p.prerouting = p.conn.AddChain(&nftables.Chain{
		Name: "prerouting", Table: p.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle,
	})
	if err := p.conn.Flush(); err != nil {
		return fmt.Errorf("%w: creating the chains of table inet %s: %v", ErrNoNftables, p.name, err)
	}
	nat := p.conn.AddChain(&nftables.Chain{
		Name: "nat", Table: p.table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest,
	})
	if err := p.conn.Flush(); err != nil {
		p.fs.Set(FeatureNAT, err)
	} else {
		p.nat = nat
	}
	p.fs.Set(FeatureSetLimit, createPinholeSets(p.raw, p.name, 1))
	// A plain set for the deletion probe, in case the pinhole sets failed.
	p.peers = &nftables.Set{Table: p.table, Name: "peers", KeyType: nftables.TypeIPAddr, ID: 9}
	if err := p.conn.AddSet(p.peers, nil); err != nil {
		return fmt.Errorf("describing set %s: %w", p.peers.Name, err)
	}
	if err := p.conn.Flush(); err != nil {
		return fmt.Errorf("%w: creating a set in table inet %s: %v", ErrNoNftables, p.name, err)
	}
	return nil
}

// probeRules adds one never-matching rule per feature, each in a batch
// of its own so that the kernel's answer is that feature's.
func (p *prober) probeRules() {
	for f, probe := range map[Feature]struct {
		chain *nftables.Chain
		exprs []expr.Any
	}{
		FeatureDynsetDelete: {p.forward, []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Dynset{SrcRegKey: 1, SetName: p.peers.Name, SetID: p.peers.ID, Operation: dynsetOpDelete},
		}},
		// The very expressions ftpgate's chains use, where there is one.
		FeatureInnerHeader: {p.forward, carriesData()},
		FeatureFib:         {p.forward, reversePathFails()},
		FeatureQueue:       {p.forward, []expr.Any{nftQueue(65535)}},
		FeatureXtQueue:     {p.forward, []expr.Any{xtQueue(65535)}},
		FeatureSocket: {p.prerouting, []expr.Any{
			&expr.Socket{Key: expr.SocketKeyTransparent, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{1}},
		}},
		FeatureTProxy: {p.prerouting, []expr.Any{
			&expr.Immediate{Register: 1, Data: []byte{0x7f, 0, 0, 1}},
			&expr.Immediate{Register: 2, Data: []byte{0, 21}},
			&expr.TProxy{Family: byte(nftables.TableFamilyIPv4), TableFamily: byte(nftables.TableFamilyINet), RegAddr: 1, RegPort: 2},
		}},
		FeatureNAT: {p.nat, []expr.Any{
			&expr.Immediate{Register: 1, Data: []byte{0x7f, 0, 0, 1}},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1},
		}},
	} {
		if probe.chain == nil {
			continue // its chain was refused: the answer is recorded
		}
		p.conn.AddRule(&nftables.Rule{Table: p.table, Chain: probe.chain, Exprs: append(neverMatch(), probe.exprs...)})
		p.fs.Set(f, p.conn.Flush())
	}
}

// neverMatch is `meta nfproto 255`, which no packet of an inet table
// passes: the probe rules never act.
func neverMatch() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{255}},
	}
}
