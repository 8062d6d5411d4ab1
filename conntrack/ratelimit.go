package conntrack

import (
	"context"
	"log/slog"
	"time"
)

const (
	levelInfo = slog.LevelInfo
	levelWarn = slog.LevelWarn
)

// logKind names the log lines that a peer can make ftpgate write again
// and again; each kind is rate-limited per session.
type logKind uint8

const (
	logMalformed logKind = iota // commands and replies that do not parse
	logTooLong                  // over-long lines
	logRefused                  // channel refused
	logOutOfStep                // pairing out of step, back in step
	logPending                  // too many commands waiting
	logKinds
)

// Every session may write a burst of logBurst lines of each kind, then
// one every logEvery; lines held back are counted and the count is
// reported with the next line of that kind and at the session's end.
const (
	logBurst = 10
	logEvery = 10 * time.Second
)

// logLimiter is a token bucket per log kind.
type logLimiter struct {
	kinds [logKinds]struct {
		tokens     float64
		last       time.Time
		started    bool
		suppressed int
	}
	suppressed int // in all, for the session's end line
}

// allow takes a token of kind at now, and returns how many lines of that
// kind were held back since the last one let through.
func (l *logLimiter) allow(kind logKind, now time.Time) (bool, int) {
	k := &l.kinds[kind]
	if !k.started {
		k.started, k.tokens, k.last = true, logBurst, now
	}
	if now.After(k.last) {
		k.tokens = min(logBurst, k.tokens+float64(now.Sub(k.last))/float64(logEvery))
		k.last = now
	}
	if k.tokens < 1 {
		k.suppressed++
		l.suppressed++
		return false, 0
	}
	k.tokens--
	n := k.suppressed
	k.suppressed = 0
	return true, n
}

// logf writes a log line of a kind a peer can repeat, within the
// session's limit for that kind.
func (s *Session) logf(kind logKind, level slog.Level, msg string, args ...any) {
	if !s.env.log.Enabled(context.Background(), level) {
		return
	}
	ok, held := s.limiter.allow(kind, s.env.now)
	if !ok {
		return
	}
	if held > 0 {
		args = append(args, "suppressed_before", held)
	}
	s.env.log.Log(context.Background(), level, msg, args...)
}
