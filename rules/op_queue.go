package rules

import (
	"fmt"
	"time"
)

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
