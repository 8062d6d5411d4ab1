package conntrack

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/ftpgate/ftpgate/rules"
)

// FTPSRange is an FTPS server's passive port range: while one of its
// control sessions is encrypted, that session's client may connect to
// these ports of this server, and only it.
type FTPSRange struct {
	Server netip.Prefix // one server (a /32 or /128) or several
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
	opened time.Time
}

func (t *Tracker) ftpsRange(server netip.Addr) (FTPSRange, bool) {
	for _, r := range t.cfg.FTPSRanges {
		if r.Server.Contains(server) {
			return r, true
		}
	}
	return FTPSRange{}, false
}

// isImplicit reports whether a control port speaks implicit FTPS.
func (t *Tracker) isImplicit(port uint16) bool { return slices.Contains(t.cfg.ImplicitPorts, port) }

// openScoped opens s's scoped range, if its server has one configured,
// when its session goes encrypted.
func (t *Tracker) openScoped(s *Session, why string) {
	if s.scoped != nil || s.ended {
		return
	}
	attrs := []any{"session", s.ID, "client", s.Client.String(), "server", s.Server.String(), "why", why}
	if _, served := t.serverFor(s.Server); !served {
		t.logf(s, slog.LevelInfo, "encrypted session of a server ftpgate does not serve: nothing opened", attrs...)
		return
	}
	fr, ok := t.ftpsRange(s.Server.Addr())
	if !ok {
		t.stats.ScopedRefused++
		t.logf(s, slog.LevelWarn, "session encrypted: its announcements are hidden and no passive range is configured for its server, so its data connections will be dropped",
			append(attrs, "configure", fmt.Sprintf("--ftps-passive-ports %s=LO-HI (the server's passive range)", s.Server.Addr()))...)
		return
	}
	client := s.Client.Addr()
	switch {
	case t.scopedByClient[client] >= t.cfg.MaxScopedPerClient:
		t.stats.ScopedRefused++
		t.logf(s, slog.LevelWarn, "scoped range refused: this client has reached its cap", append(attrs, "cap", t.cfg.MaxScopedPerClient)...)
		return
	case t.scopedOpen >= t.cfg.MaxScoped:
		t.stats.ScopedRefused++
		t.logf(s, slog.LevelWarn, "scoped range refused: the cap for the whole gateway is reached", append(attrs, "cap", t.cfg.MaxScoped)...)
		return
	}
	r := rules.ScopedRange{Client: client, Server: s.Server.Addr(), Lo: fr.Lo, Hi: fr.Hi}
	if s.nat != nil && s.nat.tr.ServerSeen.Addr() != s.Server.Addr() {
		// Through a port forward: the client connects to the public
		// address (the server announces it, inside TLS).
		r.Public = s.nat.tr.ServerSeen.Addr()
	}
	ranges := []rules.ScopedRange{r}
	if t.cfg.ImplicitActive && t.isImplicit(s.Server.Port()) && s.nat == nil {
		ranges = append(ranges, rules.ScopedRange{Client: client, Server: s.Server.Addr(), Active: true})
	}
	for _, x := range ranges {
		// Sessions of one client to one server share the element: it
		// goes when the last of them leaves TLS or ends.
		if t.scopedRefs[x]++; t.scopedRefs[x] > 1 {
			continue
		}
		t.dirty = true
		if err := t.fw.AddScoped(x); err != nil {
			t.stats.BackendErrors++
			t.log.Error("opening scoped range", "range", x.String(), "error", err)
		}
	}
	// No commit delay: the client's first data connection follows one
	// round trip away, and a held SYN cannot be admitted from a range.
	t.urgent = true
	s.scoped = &scopedState{ranges: ranges, opened: t.now}
	t.scopedByClient[client]++
	t.scopedOpen++
	t.stats.ScopedOpened++
	if t.log.Enabled(context.Background(), slog.LevelInfo) {
		a := append(attrs, "ports", fmt.Sprintf("%d-%d", fr.Lo, fr.Hi))
		if r.Public.IsValid() {
			a = append(a, "public", r.Public.String())
		}
		if len(ranges) > 1 {
			a = append(a, "active_from_989", true)
		}
		t.log.Info("scoped range open", a...)
	}
}

// closeScoped closes s's scoped range.
func (t *Tracker) closeScoped(s *Session, reason string) {
	sc := s.scoped
	if sc == nil {
		return
	}
	s.scoped = nil
	t.urgent = true // closed in the kernel before the next data connection
	for _, x := range sc.ranges {
		if t.scopedRefs[x]--; t.scopedRefs[x] > 0 {
			continue
		}
		delete(t.scopedRefs, x)
		t.dirty = true
		if err := t.fw.DelScoped(x); err != nil {
			t.stats.BackendErrors++
			t.log.Error("closing scoped range", "range", x.String(), "error", err)
		}
	}
	client := s.Client.Addr()
	if t.scopedByClient[client]--; t.scopedByClient[client] <= 0 {
		delete(t.scopedByClient, client)
	}
	t.scopedOpen--
	t.log.Info("scoped range closed", "session", s.ID, "client", s.Client.String(), "server", s.Server.String(),
		"ports", fmt.Sprintf("%d-%d", sc.ranges[0].Lo, sc.ranges[0].Hi), "reason", reason,
		"open_for", t.now.Sub(sc.opened).Round(time.Millisecond).String())
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
