package rules

import (
	"errors"
	"time"
)

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
