package rules

import (
	"errors"
	"fmt"
	"net/netip"
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
