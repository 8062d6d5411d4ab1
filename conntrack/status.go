package conntrack

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Status is what the tracker holds at one moment, for `ftpgate status`.
type Status struct {
	Time     time.Time       `json:"time"`
	Sessions []SessionStatus `json:"sessions"`
	Pinholes []PinholeStatus `json:"pinholes"`
	Scoped   []ScopedStatus  `json:"scoped_ranges"`
	Stats    Stats           `json:"counters"`
	// The counters of Stats.ClosedBy and RefusedBy, by name.
	ClosedBy  map[string]uint64 `json:"pinholes_closed_by"`
	RefusedBy map[string]uint64 `json:"channels_refused_by"`
}

// SessionStatus is one control session.
type SessionStatus struct {
	ID     string         `json:"id"`
	Client netip.AddrPort `json:"client"`
	Server netip.AddrPort `json:"server"`
	Age    Seconds        `json:"age_s"`
	Idle   Seconds        `json:"idle_s"`
	// State: half-open (no FTP yet), clear, encrypted (TLS, not parsed),
	// nat (through the control proxy); picked up when ftpgate did not see
	// it start.
	State    string `json:"state"`
	PickedUp bool   `json:"picked_up,omitempty"`
	// Through NAT: how each side sees the other.
	ClientSeenAs netip.Addr `json:"client_seen_as,omitzero"`
	ServerSeenAs netip.Addr `json:"server_seen_as,omitzero"`
	Pinholes     int        `json:"pinholes"`
}

// PinholeStatus is one open pinhole.
type PinholeStatus struct {
	Session string         `json:"session"`
	Command string         `json:"command"`
	Peer    netip.Addr     `json:"peer"`
	Addr    netip.AddrPort `json:"addr"`
	Expires time.Time      `json:"expires"`
	// Committed: in the kernel (nft list shows it); otherwise still in
	// ftpgate alone, within the commit delay.
	Committed bool `json:"committed"`
	// Through NAT: the public address:port the far side was given.
	Public netip.AddrPort `json:"public,omitzero"`
}

// ScopedStatus is an FTPS session's scoped range.
type ScopedStatus struct {
	Session string     `json:"session"`
	Client  netip.Addr `json:"client"`
	Server  netip.Addr `json:"server"`
	Ports   string     `json:"ports"`
	Public  netip.Addr `json:"public,omitzero"`
	// Active: implicit FTPS's server may connect back from port 989.
	Active bool      `json:"active_from_989,omitempty"`
	Since  time.Time `json:"since"`
}

// Seconds is a duration that JSON shows in seconds.
type Seconds float64

// Status returns the tracker's sessions, pinholes and counters, sorted
// by age. It must be called on the tracker's goroutine.
func (t *Tracker) Status() Status {
	st := Status{Time: t.env.now, Stats: t.Stats(), ClosedBy: map[string]uint64{}, RefusedBy: map[string]uint64{}}
	for i, n := range st.Stats.ClosedBy {
		st.ClosedBy[CloseReasons[i]] = n
	}
	for i, n := range st.Stats.RefusedBy {
		st.RefusedBy[RefusalReasons[i]] = n
	}
	add := func(s *Session) {
		if sc := s.ftps.scoped; sc != nil {
			r := sc.ranges[0]
			st.Scoped = append(st.Scoped, ScopedStatus{Session: s.ID, Client: r.Client, Server: r.Server,
				Ports: fmt.Sprintf("%d-%d", r.Lo, r.Hi), Public: r.Public, Active: len(sc.ranges) > 1, Since: sc.opened})
		}
		ss := SessionStatus{ID: s.ID, Client: s.Client, Server: s.Server,
			Age: Seconds(t.env.now.Sub(s.Start).Seconds()), Idle: Seconds(t.env.now.Sub(s.Last).Seconds()),
			PickedUp: s.life.pickedUp, Pinholes: len(s.pinholes)}
		switch {
		case s.nat != nil:
			ss.State = "nat"
			ss.ClientSeenAs, ss.ServerSeenAs = s.nat.tr.ClientSeen.Addr(), s.nat.tr.ServerSeen.Addr()
		case !s.life.established:
			ss.State = "half-open"
		case s.ftps.on:
			ss.State = "encrypted"
		default:
			ss.State = "clear"
		}
		st.Sessions = append(st.Sessions, ss)
	}
	t.sessions.all(add)
	slices.SortFunc(st.Sessions, func(a, b SessionStatus) int {
		if a.Age != b.Age {
			if a.Age > b.Age {
				return -1
			}
			return 1
		}
		return strings.Compare(a.ID, b.ID)
	})
	for _, p := range t.pinholes.open {
		st.Pinholes = append(st.Pinholes, PinholeStatus{Session: p.channel.Session, Command: p.channel.Command.String(),
			Peer: p.key.Peer, Addr: netip.AddrPortFrom(p.key.Addr, p.key.Port), Expires: p.expires,
			Committed: p.committed, Public: p.public})
	}
	slices.SortFunc(st.Pinholes, func(a, b PinholeStatus) int { return a.Expires.Compare(b.Expires) })
	return st
}
