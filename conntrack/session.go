package conntrack

import (
	"log/slog"
	"net/netip"
	"time"
)

// Session is one FTP control connection and what it negotiated.
type Session struct {
	ID     string
	Client netip.AddrPort
	Server netip.AddrPort
	Start  time.Time
	Last   time.Time

	host host
	env  *env
	tcp  tcpConn // not used by sessions of the control proxy, which get bytes
	life sessionLife

	lines    [2]lineSplitter
	echo     echoGuard
	reply    reply
	pair     pairing
	epsvAll  bool
	limiter  logLimiter
	pinholes []*pinhole // open pinholes, oldest first
	// nat is set for a session of the control proxy: it is fed the
	// proxy's bytes (Tracker.ProxiedBytes), not packets, and rewrites
	// announcements before the far side sees them.
	nat  *natSession
	ftps ftpsState
}

// sessionLife is where a session is in its life.
type sessionLife struct {
	established bool // it has carried FTP: counts against MaxSessions
	halfOpen    bool // not yet: counted against MaxHalfOpen
	pickedUp    bool // ftpgate did not see it start
	ended       bool
}

// host is what a Session calls on the tracker that runs it: the channels
// it announces go to the decider, its pinholes and scoped range to their
// tables, its life to the session table.
type host interface {
	decide(s *Session, ch Channel, announcer netip.Addr)
	refuse(s *Session, ch Channel, kind RefusalKind, reason string)
	planActive(s *Session, ch Channel) *natPlan
	plannedReply(s *Session, cmd pendingCommand, code int)
	dropPlanned(s *Session, cmd pendingCommand, kind RefusalKind, reason string)
	closeSessionPinholes(s *Session, kind CloseKind, reason string)
	establish(s *Session)
	endSession(s *Session, kind CloseKind, reason string)
	openScoped(s *Session, why string, handshakeDone bool)
	closeScoped(s *Session, kind CloseKind, reason string)
}

// env is what the parts of one tracker share: the settings, the log, the
// clock, the counters they add to, and who is told the sessions' story.
type env struct {
	cfg      Config
	log      *slog.Logger
	obs      Observer
	now      time.Time // the latest packet or tick
	draining bool      // nothing more will come: waiting is over
	stats    Stats
	// capWarned: when each cap's warning was last logged.
	capWarned [capWarnings]time.Time
}

// The caps whose warnings are rate-limited (env.warnCap).
const (
	capWarnSessions = iota
	capWarnHalfOpen
	capWarnCopiesLost
	capWarnDropped
	capWarnHalfOpenShare
	capWarnings
)

// advance moves the clock to now, never back.
func (e *env) advance(now time.Time) {
	if now.After(e.now) {
		e.now = now
	}
}

// warnCap logs that a cap was hit, at most every ten seconds per cap.
func (e *env) warnCap(which int, msg string, args ...any) {
	if e.now.Sub(e.capWarned[which]) > 10*time.Second {
		e.capWarned[which] = e.now
		e.log.Warn(msg, args...)
	}
}

// The session is the user of its own TCP tracking (streamUser).

func (s *Session) over() bool { return s.life.ended }

// deliver takes in-order bytes of d from the TCP tracking.
func (s *Session) deliver(d int, seq uint32, data []byte, ack uint32, hasAck bool, now time.Time) {
	s.Last = now
	if !s.life.established {
		s.host.establish(s)
		if s.life.ended {
			return
		}
	}
	s.bytes(d, seq, data, ack, now)
}

// lost is told that bytes of d will never be seen.
//
// Commands or replies may have been among them, and no count of replies
// can then prove which command a later 200 answers: a client that
// pipelines commands can keep one unanswered across any point that looks
// quiet. A 227/228/229 still pairs by what it says; active mode is
// refused for the rest of the session.
func (s *Session) lost(d int, why string) {
	s.pair.distrust(s, why)
	s.gap(d)
}

func (s *Session) distrust(why string)  { s.pair.distrust(s, why) }
func (s *Session) outOfStep(why string) { s.pair.outOfStep(s, why) }

func (s *Session) closed(reason string) {
	s.host.endSession(s, closedSessionClosed, reason)
}
