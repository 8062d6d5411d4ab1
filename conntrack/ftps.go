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

// FTPSRange is an FTPS server's passive port range: while one of its
// control sessions is encrypted, that session's client may connect to
// these ports of this server, and only it.
type FTPSRange struct {
	Server netip.Prefix // one server (a /32 or /128) or several
	Lo, Hi uint16
}

// ActiveRange is the range of ports FTPS clients listen on in active
// mode (their ftp:port-range, FileZilla's "limit local ports"): an
// implicit FTPS server of theirs may connect from port 989 to these ports
// of theirs, and to no other, while their session is encrypted. The PORT
// that names the one port is inside TLS.
type ActiveRange struct {
	Client netip.Prefix
	Lo, Hi uint16
}

// Defaults of the FTPS caps.
const (
	DefaultMaxScopedPerClient = 8
	DefaultMaxScoped          = 4096
)

// EncryptedSession is the record `ftpgate analyze` gives of a session
// that went encrypted: where an FTP helper goes blind.
type EncryptedSession struct {
	Session  string
	Client   netip.AddrPort
	Server   netip.AddrPort
	Implicit bool      // FTPS from the first byte (port 990)
	Start    time.Time // when the session began
	AuthAt   time.Time // explicit: when the server accepted AUTH
	CCCAt    time.Time // when it returned to clear text, if it did
	End      time.Time
}

// scopedState is a session's open scoped range.
type scopedState struct {
	ranges []rules.ScopedRange
	source netip.Prefix // the client's share it counts against
	opened time.Time
	// deadline: the TLS handshake must have completed by then (explicit
	// FTPS, opened at the 234); zero once it has.
	deadline time.Time
}

func (t *Tracker) ftpsRange(server netip.Addr) (FTPSRange, bool) {
	for _, r := range t.cfg.FTPSRanges {
		if r.Server.Contains(server) {
			return r, true
		}
	}
	return FTPSRange{}, false
}

func (t *Tracker) activeRange(client netip.Addr) (ActiveRange, bool) {
	for _, r := range t.cfg.ActiveRanges {
		if r.Client.Contains(client) {
			return r, true
		}
	}
	return ActiveRange{}, false
}

// isImplicit reports whether a control port speaks implicit FTPS.
func (t *Tracker) isImplicit(port uint16) bool { return slices.Contains(t.cfg.ImplicitPorts, port) }

// scopedRanges are the elements an encrypted session of s would hold
// under the configuration now, and why it holds none.
func (t *Tracker) scopedRanges(s *Session) ([]rules.ScopedRange, string) {
	if _, served := t.serverFor(s.Server); !served {
		return nil, "encrypted session of a server ftpgate does not serve: nothing opened"
	}
	fr, ok := t.ftpsRange(s.Server.Addr())
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
	if ar, ok := t.activeRange(client); ok && s.implicit && s.nat == nil {
		ranges = append(ranges, rules.ScopedRange{Client: client, Server: s.Server.Addr(), Active: true, Lo: ar.Lo, Hi: ar.Hi})
	}
	return ranges, ""
}

// openScoped opens s's scoped range when its session goes encrypted: at
// an accepted AUTH (explicit FTPS: the handshake must then complete in
// time), or once the TLS handshake has completed (implicit FTPS, or an
// explicit session whose range is open already: it keeps it).
func (t *Tracker) openScoped(s *Session, why string, handshakeDone bool) {
	if s.ended {
		return
	}
	if sc := s.scoped; sc != nil {
		if handshakeDone && !sc.deadline.IsZero() {
			sc.deadline = time.Time{}
			t.log.Info("TLS handshake completed: the scoped range stays open while the session is encrypted", "session", s.ID)
		}
		return
	}
	if s.scopeTried {
		return // refused once for this stretch of TLS; the log said why
	}
	s.scopeTried = true
	attrs := []any{"session", s.ID, "client", s.Client.String(), "server", s.Server.String(), "why", why}
	ranges, none := t.scopedRanges(s)
	if ranges == nil {
		if _, served := t.serverFor(s.Server); served {
			t.stats.ScopedRefused++
			attrs = append(attrs, "configure", fmt.Sprintf("--ftps-passive-ports %s=LO-HI (the server's passive range)", s.Server.Addr()))
			t.logf(s, slog.LevelWarn, none, attrs...)
		} else {
			t.logf(s, slog.LevelInfo, none, attrs...)
		}
		return
	}
	source := source.Of(s.Client.Addr())
	switch {
	case t.scoped.bySource[source] >= t.cfg.MaxScopedPerClient:
		t.stats.ScopedRefused++
		t.logf(s, slog.LevelWarn, "scoped range refused: this client has reached its cap (per address, per /64 for IPv6)",
			append(attrs, "cap", t.cfg.MaxScopedPerClient, "source", source.String())...)
		return
	case t.scoped.open >= t.cfg.MaxScoped:
		t.stats.ScopedRefused++
		t.logf(s, slog.LevelWarn, "scoped range refused: the cap for the whole gateway is reached", append(attrs, "cap", t.cfg.MaxScoped)...)
		return
	}
	for _, x := range ranges {
		// Sessions of one client to one server share the element: it
		// goes when the last of them leaves TLS or ends.
		t.scoped.elems.hold(x)
		if t.scoped.elems.refs[x] == 1 {
			k := [2]netip.Addr{x.Client, x.Server}
			t.scoped.byPair[k] = append(t.scoped.byPair[k], x)
		}
	}
	// No commit delay: the client's first data connection follows one
	// round trip away, and a held SYN cannot be admitted from a range.
	t.urgent = true
	sc := &scopedState{ranges: ranges, source: source, opened: t.now}
	if !handshakeDone {
		sc.deadline = t.now.Add(t.cfg.HandshakeTimeout)
	}
	s.scoped = sc
	t.scoped.bySource.Add(source)
	t.scoped.open++
	t.stats.ScopedOpened++
	if t.log.Enabled(context.Background(), slog.LevelInfo) {
		a := append(attrs, "ports", fmt.Sprintf("%d-%d", ranges[0].Lo, ranges[0].Hi))
		if ranges[0].Public.IsValid() {
			a = append(a, "public", ranges[0].Public.String())
		}
		if len(ranges) > 1 {
			a = append(a, "active_from_989_to", fmt.Sprintf("%d-%d", ranges[1].Lo, ranges[1].Hi))
		}
		if !handshakeDone {
			a = append(a, "handshake_by", sc.deadline.UTC().Format(time.RFC3339))
		}
		t.log.Info("scoped range open", a...)
	}
}

// scopedCovers reports whether an open scoped range admits a connection
// from src to dst (one that is not mapped through NAT: those are matched
// after destination NAT, which their held SYN has not met yet).
func (t *Tracker) scopedCovers(src, dst netip.AddrPort) bool {
	for _, r := range slices.Concat(t.scoped.byPair[[2]netip.Addr{src.Addr(), dst.Addr()}], t.scoped.byPair[[2]netip.Addr{dst.Addr(), src.Addr()}]) {
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
func (t *Tracker) closeScoped(s *Session, kind CloseKind, reason string) {
	sc := s.scoped
	if sc == nil {
		return
	}
	s.scoped = nil
	t.urgent = true // closed in the kernel before the next data connection
	for _, x := range sc.ranges {
		t.scoped.elems.release(x)
		if _, held := t.scoped.elems.refs[x]; !held {
			k := [2]netip.Addr{x.Client, x.Server}
			if t.scoped.byPair[k] = slices.DeleteFunc(t.scoped.byPair[k], func(r rules.ScopedRange) bool { return r == x }); len(t.scoped.byPair[k]) == 0 {
				delete(t.scoped.byPair, k)
			}
		}
	}
	t.scoped.bySource.Remove(sc.source)
	t.scoped.open--
	t.stats.ScopedClosedBy[kind]++
	t.log.Info("scoped range closed", "session", s.ID, "client", s.Client.String(), "server", s.Server.String(),
		"ports", fmt.Sprintf("%d-%d", sc.ranges[0].Lo, sc.ranges[0].Hi), "reason", reason, "kind", kind.String(),
		"open_for", t.now.Sub(sc.opened).Round(time.Millisecond).String())
}

// expireScoped closes the range of a session whose TLS handshake did not
// complete in time: a client that never speaks TLS after AUTH gets no
// range for it.
func (t *Tracker) expireScoped(s *Session, now time.Time) {
	if sc := s.scoped; sc != nil && !sc.deadline.IsZero() && !now.Before(sc.deadline) {
		t.closeScoped(s, closedNotTLS, fmt.Sprintf("the TLS handshake did not complete within %v of AUTH", t.cfg.HandshakeTimeout))
	}
}

// reconcileScoped closes the range of a session that the configuration
// no longer gives it one, or a different one (after a reload).
func (t *Tracker) reconcileScoped(s *Session) {
	sc := s.scoped
	if sc == nil {
		return
	}
	ranges, _ := t.scopedRanges(s)
	if !slices.Equal(ranges, sc.ranges) {
		t.closeScoped(s, closedReload, "the reloaded configuration no longer gives this range")
	}
}

// logf logs a line of a session, rate-limited like its refusals.
func (t *Tracker) logf(s *Session, level slog.Level, msg string, attrs ...any) {
	if ok, _ := s.limiter.allow(logRefused, t.now); ok {
		t.log.Log(context.Background(), level, msg, attrs...)
	}
}

// encryptedRecord reports a session that went encrypted, at its end.
func (t *Tracker) encryptedRecord(s *Session) {
	if t.cfg.OnEncrypted == nil || (s.authAt.IsZero() && !s.implicit) {
		return
	}
	t.cfg.OnEncrypted(EncryptedSession{Session: s.ID, Client: s.Client, Server: s.Server, Implicit: s.implicit,
		Start: s.Start, AuthAt: s.authAt, CCCAt: s.cccAt, End: t.now})
}
