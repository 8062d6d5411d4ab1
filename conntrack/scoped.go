package conntrack

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/ftpgate/ftpgate/internal/source"
	"github.com/ftpgate/ftpgate/rules"
)

// scopedState is a session's open scoped range.
type scopedState struct {
	ranges []rules.ScopedRange
	source netip.Prefix // the client's share it counts against
	opened time.Time
	// deadline: the TLS handshake must have completed by then (explicit
	// FTPS, opened at the 234); zero once it has.
	deadline time.Time
}

// scopedTable holds the FTPS scoped ranges of encrypted sessions: the
// kernel elements, shared by the sessions of one client to one server,
// and the caps on them, for the gateway and per source.
type scopedTable struct {
	env      *env
	fw       *firewall
	elems    *refSet[rules.ScopedRange]
	byPair   map[[2]netip.Addr][]rules.ScopedRange // client . server -> elements, for held SYNs
	bySource source.Shares
	open     int
}

func newScopedTable(e *env, fw *firewall) *scopedTable {
	return &scopedTable{env: e, fw: fw, elems: newRefSet("FTPS scoped range", fw, fw.backend.AddScoped, fw.backend.DelScoped),
		byPair: map[[2]netip.Addr][]rules.ScopedRange{}, bySource: source.Shares{}}
}

// rangesFor are the elements an encrypted session of s would hold under
// the configuration now, and why it holds none.
func (t *scopedTable) rangesFor(s *Session) ([]rules.ScopedRange, string) {
	cfg := &t.env.cfg
	if _, served := serverFor(cfg.Servers, s.Server); !served {
		return nil, "encrypted session of a server ftpgate does not serve: nothing opened"
	}
	fr, ok := ftpsRange(cfg.FTPSRanges, s.Server.Addr())
	if !ok {
		return nil, "session encrypted: its announcements are hidden and no passive range is configured for its server, so its data connections will be dropped"
	}
	client := s.Client.Addr()
	r := rules.ScopedRange{Client: client, Server: s.Server.Addr(), Lo: fr.Lo, Hi: fr.Hi}
	if s.nat != nil && s.nat.tr.ServerSeen.Addr() != s.Server.Addr() {
		// Through a port forward: the client connects to the public
		// address (the server announces it, inside TLS).
		r.Public = s.nat.tr.ServerSeen.Addr()
	}
	ranges := []rules.ScopedRange{r}
	if ar, ok := activeRange(cfg.ActiveRanges, client); ok && s.ftps.implicit && s.nat == nil {
		ranges = append(ranges, rules.ScopedRange{Client: client, Server: s.Server.Addr(), Active: true, Lo: ar.Lo, Hi: ar.Hi})
	}
	return ranges, ""
}

// openScoped opens s's scoped range when its session goes encrypted: at
// an accepted AUTH (explicit FTPS: the handshake must then complete in
// time), or once the TLS handshake has completed (implicit FTPS, or an
// explicit session whose range is open already: it keeps it).
func (t *scopedTable) openScoped(s *Session, why string, handshakeDone bool) {
	if s.life.ended {
		return
	}
	if sc := s.ftps.scoped; sc != nil {
		if handshakeDone && !sc.deadline.IsZero() {
			sc.deadline = time.Time{}
			t.env.log.Info("TLS handshake completed: the scoped range stays open while the session is encrypted", "session", s.ID)
		}
		return
	}
	if s.ftps.scopeTried {
		return // refused once for this stretch of TLS; the log said why
	}
	s.ftps.scopeTried = true
	attrs := []any{"session", s.ID, "client", s.Client.String(), "server", s.Server.String(), "why", why}
	ranges, none := t.rangesFor(s)
	if ranges == nil {
		t.refuseNone(s, none, attrs)
		return
	}
	source := source.Of(s.Client.Addr())
	switch {
	case t.bySource[source] >= t.env.cfg.MaxScopedPerClient:
		t.env.stats.ScopedRefused++
		s.logf(logRefused, slog.LevelWarn, "scoped range refused: this client has reached its cap (per address, per /64 for IPv6)",
			append(attrs, "cap", t.env.cfg.MaxScopedPerClient, "source", source.String())...)
		return
	case t.open >= t.env.cfg.MaxScoped:
		t.env.stats.ScopedRefused++
		s.logf(logRefused, slog.LevelWarn, "scoped range refused: the cap for the whole gateway is reached", append(attrs, "cap", t.env.cfg.MaxScoped)...)
		return
	}
	for _, x := range ranges {
		// Sessions of one client to one server share the element: it
		// goes when the last of them leaves TLS or ends.
		if t.elems.hold(x) {
			k := [2]netip.Addr{x.Client, x.Server}
			t.byPair[k] = append(t.byPair[k], x)
		}
	}
	// No commit delay: the client's first data connection follows one
	// round trip away, and a held SYN cannot be admitted from a range.
	t.fw.queuedUrgent()
	sc := &scopedState{ranges: ranges, source: source, opened: t.env.now}
	if !handshakeDone {
		sc.deadline = t.env.now.Add(t.env.cfg.HandshakeTimeout)
	}
	s.ftps.scoped = sc
	t.bySource.Add(source)
	t.open++
	t.env.stats.ScopedOpened++
	t.logOpened(sc, attrs)
}

// refuseNone logs why an encrypted session gets no range: a warning for
// a server ftpgate serves (configure its range), news for another.
func (t *scopedTable) refuseNone(s *Session, why string, attrs []any) {
	if _, served := serverFor(t.env.cfg.Servers, s.Server); !served {
		s.logf(logRefused, slog.LevelInfo, why, attrs...)
		return
	}
	t.env.stats.ScopedRefused++
	attrs = append(attrs, "configure", fmt.Sprintf("--ftps-passive-ports %s=LO-HI (the server's passive range)", s.Server.Addr()))
	s.logf(logRefused, slog.LevelWarn, why, attrs...)
}

func (t *scopedTable) logOpened(sc *scopedState, attrs []any) {
	if !t.env.log.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	attrs = append(attrs, "ports", fmt.Sprintf("%d-%d", sc.ranges[0].Lo, sc.ranges[0].Hi))
	if sc.ranges[0].Public.IsValid() {
		attrs = append(attrs, "public", sc.ranges[0].Public.String())
	}
	if len(sc.ranges) > 1 {
		attrs = append(attrs, "active_from_989_to", fmt.Sprintf("%d-%d", sc.ranges[1].Lo, sc.ranges[1].Hi))
	}
	if !sc.deadline.IsZero() {
		attrs = append(attrs, "handshake_by", sc.deadline.UTC().Format(time.RFC3339))
	}
	t.env.log.Info("scoped range open", attrs...)
}

// covers reports whether an open scoped range admits a connection from
// src to dst (one that is not mapped through NAT: those are matched
// after destination NAT, which their held SYN has not met yet).
func (t *scopedTable) covers(src, dst netip.AddrPort) bool {
	for _, r := range slices.Concat(t.byPair[[2]netip.Addr{src.Addr(), dst.Addr()}], t.byPair[[2]netip.Addr{dst.Addr(), src.Addr()}]) {
		switch {
		case r.Public.IsValid():
		case r.Active && src.Port() == 989 && r.Server == src.Addr() && r.Client == dst.Addr() && r.Lo <= dst.Port() && dst.Port() <= r.Hi:
			return true
		case !r.Active && r.Client == src.Addr() && r.Server == dst.Addr() && r.Lo <= dst.Port() && dst.Port() <= r.Hi:
			return true
		}
	}
	return false
}

// closeScoped closes s's scoped range.
func (t *scopedTable) closeScoped(s *Session, kind CloseKind, reason string) {
	sc := s.ftps.scoped
	if sc == nil {
		return
	}
	s.ftps.scoped = nil
	t.fw.queuedUrgent() // closed in the kernel before the next data connection
	for _, x := range sc.ranges {
		if t.elems.release(x) {
			k := [2]netip.Addr{x.Client, x.Server}
			if t.byPair[k] = slices.DeleteFunc(t.byPair[k], func(r rules.ScopedRange) bool { return r == x }); len(t.byPair[k]) == 0 {
				delete(t.byPair, k)
			}
		}
	}
	t.bySource.Remove(sc.source)
	t.open--
	t.env.stats.ScopedClosedBy[kind]++
	t.env.log.Info("scoped range closed", "session", s.ID, "client", s.Client.String(), "server", s.Server.String(),
		"ports", fmt.Sprintf("%d-%d", sc.ranges[0].Lo, sc.ranges[0].Hi), "reason", reason, "kind", kind.String(),
		"open_for", t.env.now.Sub(sc.opened).Round(time.Millisecond).String())
}

// expire closes the range of a session whose TLS handshake did not
// complete in time: a client that never speaks TLS after AUTH gets no
// range for it.
func (t *scopedTable) expire(s *Session, now time.Time) {
	if sc := s.ftps.scoped; sc != nil && !sc.deadline.IsZero() && !now.Before(sc.deadline) {
		t.closeScoped(s, closedNotTLS, fmt.Sprintf("the TLS handshake did not complete within %v of AUTH", t.env.cfg.HandshakeTimeout))
	}
}

// reconcile closes the range of a session that the configuration no
// longer gives it one, or a different one (after a reload). It reports
// whether it closed one.
func (t *scopedTable) reconcile(s *Session) bool {
	sc := s.ftps.scoped
	if sc == nil {
		return false
	}
	if ranges, _ := t.rangesFor(s); !slices.Equal(ranges, sc.ranges) {
		t.closeScoped(s, closedReload, "the reloaded configuration no longer gives this range")
		return true
	}
	return false
}
