// Package rules is the nftables side of ftpgate and nothing else: one
// table the daemon owns, two sets of pinholes (IPv4, IPv6) whose elements
// admit one packet each, the sets of control-session peers, the chains
// that consume a pinhole on the first packet of its data connection and
// mark that connection (and, inline, copy control segments and hold data
// SYNs), batched commits, and a dry-run backend. The rules are built by
// pure functions (chains.go); golden_test.go checks their bytes without
// root, nftables_test.go their behaviour in a throwaway namespace.
package rules

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Pinhole admits exactly one TCP data connection from Peer to Addr:Port,
// with any source port. It is consumed by the first packet of that
// connection.
type Pinhole struct {
	Peer netip.Addr // the host that will open the data connection
	Addr netip.Addr // the announced address it will connect to
	Port uint16     // the announced port
}

func (p Pinhole) String() string {
	return fmt.Sprintf("%s -> %s", p.Peer, netip.AddrPortFrom(p.Addr, p.Port))
}

// Valid reports whether both addresses are of one family and the port is set.
func (p Pinhole) Valid() bool {
	return p.Peer.IsValid() && p.Addr.IsValid() && p.Port != 0 &&
		p.Peer.Is4() == p.Addr.Is4() && p.Peer.Zone() == "" && p.Addr.Zone() == ""
}

// Peers are the two hosts of an FTP control session. While they have a
// session, a new TCP connection between them that finds no pinhole is
// held for the daemon (see AddInlineRules) rather than passed on to the
// admin's rules, which would drop it: its announcement may still be on
// the way through the daemon.
type Peers struct {
	Client netip.Addr
	Server netip.Addr
}

func (p Peers) String() string { return fmt.Sprintf("%s <-> %s", p.Client, p.Server) }

// Valid reports whether both addresses are set and of one family.
func (p Peers) Valid() bool {
	return p.Client.IsValid() && p.Server.IsValid() && p.Client.Is4() == p.Server.Is4() &&
		p.Client.Zone() == "" && p.Server.Zone() == ""
}

// Backend programs pinholes. Add and Del only queue work; Commit sends all
// queued work in one batch. Implementations are not safe for concurrent use.
type Backend interface {
	// AddPinhole queues the pinhole with the given lifetime. Idempotent:
	// adding a pinhole that exists refreshes nothing and is no error.
	AddPinhole(p Pinhole, timeout time.Duration) error
	// DelPinhole queues the removal of the pinhole. Idempotent: removing a
	// pinhole that was consumed, expired or never added is no error.
	DelPinhole(p Pinhole) error
	// AddPeers queues the pair of hosts of a control session, in both
	// directions. Idempotent.
	AddPeers(p Peers) error
	// DelPeers queues the removal of the pair. Idempotent.
	DelPeers(p Peers) error
	// AddMapping queues a NAT mapping with the given lifetime. Idempotent.
	AddMapping(m Mapping, timeout time.Duration) error
	// DelMapping queues the removal of the mapping. Idempotent.
	DelMapping(m Mapping) error
	// AddScoped queues an FTPS session's scoped range. Idempotent.
	AddScoped(r ScopedRange) error
	// DelScoped queues its removal. Idempotent.
	DelScoped(r ScopedRange) error
	// CancelAdd drops a queued, not yet committed AddPinhole of p and
	// reports whether there was one: a pinhole used before it was ever
	// committed then costs the kernel nothing.
	CancelAdd(p Pinhole) bool
	// Commit applies everything queued, atomically where the backend can.
	Commit() error
	// CommitPeers applies the queued changes of peers only; pinhole
	// changes stay queued.
	CommitPeers() error
	// Close removes everything the backend created.
	Close() error
}

// ErrNoNftables is returned when the kernel's nf_tables cannot be
// programmed (not root, no CAP_NET_ADMIN, nf_tables missing).
var ErrNoNftables = errors.New("cannot program nftables")

// ErrTableBusy is returned when the table exists and belongs to another
// process, typically another ftpgate.
var ErrTableBusy = errors.New("nftables table is owned by another process")

// ErrInvalidPinhole is returned for a pinhole that mixes address families
// or has no port.
var ErrInvalidPinhole = errors.New("invalid pinhole")

// ErrInvalidPeers is returned for peers that mix address families.
var ErrInvalidPeers = errors.New("invalid control session peers")

// op is one queued change of a backend: add (with its timeout) or delete
// a pinhole, or the peers of a control session.
type op struct {
	p       Pinhole
	peers   Peers   // set instead of p for a change of the peers sets
	m       Mapping // set instead of p for a change of the NAT maps
	scoped  *ScopedRange
	add     bool
	timeout time.Duration
}

func (o op) String() string {
	switch {
	case o.peers.Client.IsValid():
		return "control session peers " + o.peers.String()
	case o.m.Peer.IsValid():
		return "NAT mapping " + o.m.String()
	case o.scoped != nil:
		return "scoped range " + o.scoped.String()
	}
	return "pinhole " + o.p.String()
}

// newPeersOp checks p and returns the change to queue.
func newPeersOp(p Peers, add bool) (op, error) {
	if !p.Valid() {
		return op{}, fmt.Errorf("control session peers %v: %w", p, ErrInvalidPeers)
	}
	return op{peers: p, add: add}, nil
}

// newOp checks p and returns the change to queue.
func newOp(p Pinhole, add bool, timeout time.Duration) (op, error) {
	if !p.Valid() {
		verb := "removing"
		if add {
			verb = "adding"
		}
		return op{}, fmt.Errorf("%s pinhole %v: %w", verb, p, ErrInvalidPinhole)
	}
	return op{p: p, add: add, timeout: timeout}, nil
}

// DryRun is a Backend that programs nothing and remembers what would be
// open, for `ftpgate analyze` and for tests of the layers above.
type DryRun struct {
	Open    map[Pinhole]time.Duration // currently added, with their timeout
	Peers   map[Peers]bool            // control session peers currently added
	Maps    map[Mapping]time.Duration // NAT mappings currently added
	Scoped  map[ScopedRange]bool      // FTPS scoped ranges currently added
	Adds    int                       // AddPinhole calls committed
	Dels    int                       // DelPinhole calls committed
	Commits int
	opQueue
}

// NewDryRun returns an empty DryRun backend.
func NewDryRun() *DryRun {
	return &DryRun{Open: make(map[Pinhole]time.Duration), Peers: make(map[Peers]bool), Maps: make(map[Mapping]time.Duration), Scoped: make(map[ScopedRange]bool)}
}

// opQueue holds the changes a backend has not committed yet. Both
// backends embed it for their Add, Del and CancelAdd methods.
type opQueue struct{ pending []op }

func (q *opQueue) enqueue(o op, err error) error {
	if err == nil {
		q.pending = append(q.pending, o)
	}
	return err
}

// AddPinhole queues `nft add element inet ftpgate SET { PEER . ADDR . PORT timeout T }`.
func (q *opQueue) AddPinhole(p Pinhole, timeout time.Duration) error {
	return q.enqueue(newOp(p, true, timeout))
}

// DelPinhole queues `nft delete element inet ftpgate SET { PEER . ADDR . PORT }`.
// It is idempotent: the element is added (a no-op if present) and deleted
// in the same batch, because deleting an absent element would fail the
// whole batch, and the kernel may have consumed or expired it meanwhile.
func (q *opQueue) DelPinhole(p Pinhole) error { return q.enqueue(newOp(p, false, 0)) }

// AddPeers queues `nft add element inet ftpgate ftp_control_peers_v4 { C . S, S . C }`.
func (q *opQueue) AddPeers(p Peers) error { return q.enqueue(newPeersOp(p, true)) }

// DelPeers queues `nft delete element inet ftpgate ftp_control_peers_v4 { C . S, S . C }`,
// idempotent like DelPinhole.
func (q *opQueue) DelPeers(p Peers) error { return q.enqueue(newPeersOp(p, false)) }

// take removes and returns the queued changes, all or only those of peers.
func (q *opQueue) take(onlyPeers bool) []op {
	if !onlyPeers {
		ops := q.pending
		q.pending = q.pending[:0]
		return ops
	}
	var peers []op
	kept := q.pending[:0]
	for _, o := range q.pending {
		if o.peers.Client.IsValid() {
			peers = append(peers, o)
		} else {
			kept = append(kept, o)
		}
	}
	q.pending = kept
	return peers
}

// CancelAdd removes the last queued add of p, if no change of p follows it.
func (q *opQueue) CancelAdd(p Pinhole) bool {
	for i := len(q.pending) - 1; i >= 0; i-- {
		if q.pending[i].peers.Client.IsValid() || q.pending[i].p != p {
			continue
		}
		if !q.pending[i].add {
			return false
		}
		q.pending = append(q.pending[:i], q.pending[i+1:]...)
		return true
	}
	return false
}

func (d *DryRun) Commit() error { return d.commit(d.take(false)) }

func (d *DryRun) CommitPeers() error { return d.commit(d.take(true)) }

func (d *DryRun) commit(ops []op) error {
	if len(ops) == 0 {
		return nil
	}
	for _, op := range ops {
		if op.scoped != nil {
			if op.add {
				d.Scoped[*op.scoped] = true
			} else {
				delete(d.Scoped, *op.scoped)
			}
			continue
		}
		if op.m.Peer.IsValid() {
			if op.add {
				d.Maps[op.m] = op.timeout
			} else {
				delete(d.Maps, op.m)
			}
			continue
		}
		if op.peers.Client.IsValid() {
			if op.add {
				d.Peers[op.peers] = true
			} else {
				delete(d.Peers, op.peers)
			}
			continue
		}
		if op.add {
			d.Open[op.p] = op.timeout
			d.Adds++
		} else {
			delete(d.Open, op.p)
			d.Dels++
		}
	}
	d.Commits++
	return nil
}

func (d *DryRun) Close() error {
	clear(d.Open)
	clear(d.Peers)
	return nil
}
