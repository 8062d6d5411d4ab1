// Package report draws FTP control sessions for people: every command and
// reply in order, what each announced, what the firewall decided and the
// data connection that followed, as one self-contained HTML page with a
// sequence diagram per session (html.go). It takes the tracker's
// observations (conntrack.Config's On... hooks) from `ftpgate analyze`
// and from the daemon alike, and keeps a bounded number of sessions.
package report

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ftpgate/ftpgate/conntrack"
	"github.com/ftpgate/ftpgate/parser"
)

// Options configure a Report.
type Options struct {
	Title  string // the page's title
	Source string // what was observed: a capture file, a daemon
	// MaxSessions bounds the sessions kept: beyond, the oldest ended ones
	// are dropped (their counts stay in the summary). Default 1000.
	MaxSessions int
	// MaxEvents bounds the control lines drawn per session; later ones
	// are only counted. Decisions and data connections, the point of the
	// page, have a bound four times as high. Default 400.
	MaxEvents int
	// PageSize is how many sessions one page of the report shows.
	// Default 50.
	PageSize int
	// Live: the report of a running daemon, drawn newest session first,
	// with a switch that reloads the page every 5 s.
	Live bool
	// MaxTotalEvents bounds the events of all sessions together, and so
	// the memory (a few hundred bytes each): beyond, the oldest sessions
	// go. Default 100,000.
	MaxTotalEvents int
}

// Report collects sessions. Its methods may be called from any
// goroutine.
type Report struct {
	mu       sync.Mutex
	opt      Options
	sessions map[string]*session
	order    []*session // by first observation
	byData   map[dataKey]*expected
	sum      summary
	events   int // in all sessions
	changed  bool
	seq      int
}

type summary struct {
	sessions, evicted   int
	encrypted           int
	byMode              map[string]int // "active", "passive"
	byCommand           map[string]int
	opened, refused     int
	started, dropped    int
	closedUnused        int
	refusedBy           map[string]int
	encryptedExplicit   int
	encryptedImplicit   int
	first, last         time.Time
	sessionsWithRefusal int
}

type session struct {
	id             string
	client, server netip.AddrPort
	start, end     time.Time
	last           time.Time // of its latest event
	endReason      string
	events         []event
	more           int       // events not kept
	lines, others  int       // events kept, by kind
	expects        []dataKey // its channels' entries in Report.byData
	enc            *conntrack.EncryptedSession
	active         int
	passive        int
	refused        int
	ended          bool
}

type eventKind uint8

const (
	evLine eventKind = iota
	evDecision
	evDataStarted
	evDataDropped
	evClosedUnused
	evTLSStart
	evTLSEnd
	evEnd
)

type event struct {
	kind       eventKind
	time       time.Time
	seq        int
	fromServer bool
	text       string
	announces  netip.AddrPort     // a line's announcement, decoded
	ch         *conntrack.Channel // decisions and data connections
	wait       time.Duration      // evDataStarted: since the pinhole opened
	from       netip.AddrPort
	tries      int // evDataDropped: SYNs seen
}

// dataKey is the connection a channel expects: from OrigH to RespH:RespP.
type dataKey struct {
	from netip.Addr
	to   netip.AddrPort
}

type expected struct {
	s  *session
	ch conntrack.Channel
	// dropped: 1 + the index in s.events of its dropped connection, once
	// one is drawn.
	dropped int
}

// New returns an empty report.
func New(o Options) *Report {
	if o.MaxSessions <= 0 {
		o.MaxSessions = 1000
	}
	if o.MaxEvents <= 0 {
		o.MaxEvents = 400
	}
	if o.PageSize <= 0 {
		o.PageSize = 50
	}
	if o.MaxTotalEvents <= 0 {
		o.MaxTotalEvents = 100_000
	}
	return &Report{opt: o, sessions: map[string]*session{}, byData: map[dataKey]*expected{},
		sum: summary{byMode: map[string]int{}, byCommand: map[string]int{}, refusedBy: map[string]int{}}}
}

// A Report is told the sessions' story by the tracker.
var _ conntrack.Observer = (*Report)(nil)

// sessionFor returns the session id, created on its first observation.
func (r *Report) sessionFor(id string, client, server netip.AddrPort, t time.Time) *session {
	if s, ok := r.sessions[id]; ok {
		return s
	}
	r.evict()
	s := &session{id: id, client: client, server: server, start: t}
	r.sessions[id] = s
	r.order = append(r.order, s)
	r.sum.sessions++
	if r.sum.first.IsZero() || t.Before(r.sum.first) {
		r.sum.first = t
	}
	return s
}

// evict makes room for one more session: the oldest ended one goes,
// else the oldest.
func (r *Report) evict() {
	if len(r.order) < r.opt.MaxSessions {
		return
	}
	r.evictOne(nil)
}

// evictOne drops the oldest ended session, else the oldest, never keep.
// It reports whether it dropped one.
func (r *Report) evictOne(keep *session) bool {
	victim := -1
	for i, s := range r.order {
		if s == keep {
			continue
		}
		if victim < 0 {
			victim = i
		}
		if s.ended {
			victim = i
			break
		}
	}
	if victim < 0 {
		return false
	}
	s := r.order[victim]
	r.order = append(r.order[:victim], r.order[victim+1:]...)
	r.events -= len(s.events)
	delete(r.sessions, s.id)
	for _, k := range s.expects {
		if e, ok := r.byData[k]; ok && e.s == s {
			delete(r.byData, k)
		}
	}
	r.sum.evicted++
	return true
}

// add appends e to s's events, unless s has reached its bound; it
// reports whether e was kept.
func (r *Report) add(s *session, e event) bool {
	r.changed = true
	r.seq++
	e.seq = r.seq
	if e.time.After(r.sum.last) {
		r.sum.last = e.time
	}
	if e.time.After(s.last) {
		s.last = e.time
	}
	n, limit := &s.others, 4*r.opt.MaxEvents
	if e.kind == evLine {
		n, limit = &s.lines, r.opt.MaxEvents
	}
	for r.events >= r.opt.MaxTotalEvents {
		if !r.evictOne(s) {
			break
		}
	}
	if *n >= limit || r.events >= r.opt.MaxTotalEvents {
		s.more++
		return false
	}
	*n++
	r.events++
	s.events = append(s.events, e)
	return true
}

// Line records one control line. Passwords are not kept.
func (r *Report) Line(l conntrack.ControlLine) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.sessionFor(l.Session, l.Client, l.Server, l.Time)
	e := event{kind: evLine, time: l.Time, fromServer: l.FromServer, text: printable(redact(l.Text, l.FromServer))}
	if l.FromServer {
		rl := parser.ParseReplyLine(l.Text)
		var err error
		switch rl.Code {
		case 227:
			e.announces, err = parser.ParsePASVReply(rl.Text)
		case 228:
			e.announces, err = parser.ParseLPSVReply(rl.Text)
		case 229:
			var port uint16
			if port, err = parser.ParseEPSVReply(rl.Text); err == nil {
				e.announces = netip.AddrPortFrom(l.Server.Addr(), port)
			}
		}
		if err != nil {
			e.announces = netip.AddrPort{}
		}
	} else if c, err := parser.ParseCommand(l.Text); err == nil && c.Verb.IsActive() {
		e.announces = c.Endpoint
	}
	r.add(s, e)
}

// Channel records the firewall's decision on an announced channel.
func (r *Report) Channel(c conntrack.Channel) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.sessionFor(c.Session, c.Client, c.Server, c.Time)
	mode := "active"
	if c.Passive {
		mode = "passive"
		s.passive++
	} else {
		s.active++
	}
	r.sum.byMode[mode]++
	r.sum.byCommand[c.Command.String()]++
	if c.Verdict == conntrack.VerdictOpen {
		r.sum.opened++
	} else {
		r.sum.refused++
		r.sum.refusedBy[c.Reason]++
		if s.refused == 0 {
			r.sum.sessionsWithRefusal++
		}
		s.refused++
	}
	// Drawn when it was taken: an active-mode channel is announced by
	// the command but decided at the server's reply.
	r.add(s, event{kind: evDecision, time: later(c.Time, s.last), ch: &c})
	if len(r.byData) < 4*r.opt.MaxSessions && len(s.expects) < r.opt.MaxEvents {
		k := dataKey{c.OrigH, netip.AddrPortFrom(c.RespH, c.RespP)}
		r.byData[k] = &expected{s: s, ch: c}
		s.expects = append(s.expects, k)
	}
}

// ChannelClosed records a pinhole's end: its data connection started,
// or it closed unused.
func (r *Report) ChannelClosed(c conntrack.ChannelClosed) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.sessions[c.Channel.Session]
	if !ok {
		return
	}
	if c.Started {
		r.sum.started++
		r.add(s, event{kind: evDataStarted, time: c.At, ch: &c.Channel, wait: c.At.Sub(c.Channel.Time)})
		return
	}
	r.sum.closedUnused++
	r.add(s, event{kind: evClosedUnused, time: c.At, ch: &c.Channel, text: c.Reason})
}

// DataSYN records a data connection attempt seen in a capture. Those
// that used a pinhole are drawn from ChannelClosed; the others are drawn
// when they are what a refused or closed channel announced.
func (r *Report) DataSYN(d conntrack.DataSYN) {
	if d.Admitted {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	x, ok := r.byData[dataKey{d.From.Addr(), d.To}]
	if !ok {
		return
	}
	if _, live := r.sessions[x.s.id]; !live {
		return
	}
	if x.dropped > 0 {
		x.s.events[x.dropped-1].tries++ // a retransmission
		r.changed = true
		return
	}
	r.sum.dropped++
	if r.add(x.s, event{kind: evDataDropped, time: d.Time, ch: &x.ch, from: d.From, tries: 1}) {
		x.dropped = len(x.s.events)
	}
}

// Encrypted records a session that went encrypted (FTPS).
func (r *Report) Encrypted(e conntrack.EncryptedSession) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.sessionFor(e.Session, e.Client, e.Server, e.Start)
	if s.enc != nil {
		return
	}
	s.enc = &e
	r.sum.encrypted++
	if e.Implicit {
		r.sum.encryptedImplicit++
	} else {
		r.sum.encryptedExplicit++
	}
	at := e.AuthAt
	if e.Implicit || at.IsZero() {
		at = e.Start
	}
	r.add(s, event{kind: evTLSStart, time: at})
	if !e.CCCAt.IsZero() {
		r.add(s, event{kind: evTLSEnd, time: e.CCCAt})
	}
}

// SessionEnd records the end of a session.
func (r *Report) SessionEnd(e conntrack.SessionEnd) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.sessionFor(e.Session, e.Client, e.Server, e.Start)
	s.start, s.end, s.endReason, s.ended = e.Start, e.End, e.Reason, true
	r.add(s, event{kind: evEnd, time: e.End, text: e.Reason})
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// Changed reports whether anything was observed since the last write.
func (r *Report) Changed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed
}

// WriteFile writes the report to path, atomically (a reader never sees
// half a page).
func (r *Report) WriteFile(path string) error {
	var b bytes.Buffer
	if err := r.WriteHTML(&b); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".report-*.html")
	if err != nil {
		return fmt.Errorf("writing the report: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b.Bytes()); err != nil {
		tmp.Close()
		return fmt.Errorf("writing the report: %w", err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("writing the report: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing the report: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing the report: %w", err)
	}
	return nil
}

// redact hides what a report must not show: the argument of PASS and
// ACCT.
func redact(line []byte, fromServer bool) []byte {
	if fromServer || len(line) < 4 {
		return line
	}
	verb := bytes.ToUpper(line[:4])
	if (bytes.Equal(verb, []byte("PASS")) || bytes.Equal(verb, []byte("ACCT"))) && len(line) > 5 {
		return append(append([]byte{}, line[:5]...), "********"...)
	}
	return line
}

// printable makes a line safe to show: control bytes as \xNN, at most
// 300 bytes.
func printable(b []byte) string {
	const max = 300
	var out []byte
	for i, c := range b {
		if i == max {
			out = append(out, "…"...)
			break
		}
		if c < 0x20 || c == 0x7f {
			out = fmt.Appendf(out, `\x%02x`, c)
			continue
		}
		out = append(out, c)
	}
	return string(bytes.ToValidUTF8(out, []byte("?")))
}
