package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"time"

	flag "github.com/spf13/pflag"

	"github.com/ftpgate/ftpgate/conntrack"
	"github.com/ftpgate/ftpgate/rules"
)

// portList is a comma-separated list of TCP ports.
type portList []uint16

func (p *portList) String() string {
	s := make([]string, len(*p))
	for i, v := range *p {
		s[i] = strconv.Itoa(int(v))
	}
	return strings.Join(s, ",")
}

func (p *portList) Type() string { return "ports" }

func (p *portList) Set(v string) error {
	var out []uint16
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.ParseUint(strings.TrimSpace(f), 10, 16)
		if err != nil || n == 0 {
			return fmt.Errorf("%q is not a port 1-65535", f)
		}
		out = append(out, uint16(n))
	}
	*p = out
	return nil
}

// mark is VALUE/MASK for the conntrack mark. Without a mask, the mask is
// the value's own bits: ftpgate claims no more of the mark than it sets.
type mark struct{ value, mask uint32 }

func (m *mark) String() string { return fmt.Sprintf("%#08x/%#08x", m.value, m.mask) }

func (m *mark) Type() string { return "VALUE/MASK" }

// acceptLine is the line the admin's ruleset needs before its drop to
// admit what ftpgate marks.
func (m *mark) acceptLine() string {
	return fmt.Sprintf("ct mark & %#08x == %#08x accept", m.mask, m.value)
}

func (m *mark) Set(v string) error {
	val, msk, ok := strings.Cut(v, "/")
	value, err := strconv.ParseUint(val, 0, 32)
	if err != nil {
		return fmt.Errorf("mark value %q: %v", val, err)
	}
	mask := value
	if ok {
		if mask, err = strconv.ParseUint(msk, 0, 32); err != nil {
			return fmt.Errorf("mark mask %q: %v", msk, err)
		}
	}
	if value == 0 || uint32(value)&^uint32(mask) != 0 {
		return fmt.Errorf("mark %s: value must be non-zero and within the mask", v)
	}
	m.value, m.mask = uint32(value), uint32(mask)
	return nil
}

// trackerFlags are the flags shared by run and analyze: they decide what
// is parsed and what the policy allows.
type trackerFlags struct {
	controlPorts   portList
	minDataPort    uint
	pinholeTimeout time.Duration
	idleTimeout    time.Duration
	handshake      time.Duration
	maxSessions    int
	maxHalfOpen    int
	sessionsShare  int
	halfOpenShare  int
	maxPinholes    int
	maxPerSession  int
	maxLine        int
	logFormat      string
	logLevel       string
	level          slog.LevelVar // the logger's, changed by a reload
}

func (f *trackerFlags) register(fs *flag.FlagSet, defaultLevel string) {
	f.controlPorts = portList{21}
	fs.Var(&f.controlPorts, "control-ports", "comma-separated TCP `ports` of FTP control connections")
	fs.UintVar(&f.minDataPort, "min-data-port", 1024, "refuse announced data ports below this `port`")
	fs.DurationVar(&f.pinholeTimeout, "pinhole-timeout", 60*time.Second, "close a pinhole not used within this `duration` (kernel element timeout)")
	fs.DurationVar(&f.idleTimeout, "idle-timeout", 30*time.Minute, "forget a control session silent for this `duration`, closing its pinholes")
	fs.DurationVar(&f.handshake, "handshake-timeout", conntrack.DefaultHandshakeTimeout, "forget a control connection that has not carried FTP (the server's greeting) within this `duration` of its first packet: half-open connections cannot hold the session cap")
	fs.IntVar(&f.maxSessions, "max-sessions", 65536, "track at most this many control sessions that carry FTP; new ones beyond are refused and logged")
	fs.IntVar(&f.maxHalfOpen, "max-half-open", conntrack.DefaultMaxHalfOpen, "track at most this many control connections that have not carried FTP yet; they do not count against --max-sessions")
	fs.IntVar(&f.sessionsShare, "max-sessions-per-client", 0, "at most this many of --max-sessions for one client (per address; per /64 for IPv6), so that no one source shuts the others out; 0: a sixteenth of --max-sessions, at least 4")
	fs.IntVar(&f.halfOpenShare, "max-half-open-per-client", 0, "at most this many of --max-half-open for one client (per address; per /64 for IPv6); 0: a sixteenth of --max-half-open, at least 4")
	fs.IntVar(&f.maxPinholes, "max-pinholes", 65536, "at most this many pinholes open in all; new ones beyond are refused and logged")
	fs.IntVar(&f.maxPerSession, "max-pinholes-per-session", 4, "at most this many pinholes open per control session")
	fs.IntVar(&f.maxLine, "max-line", 2048, "drop (and count) control lines longer than this many `bytes` (without the line end) unparsed")
	fs.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&f.logLevel, "log-level", defaultLevel, "log level: debug, info, warn or error")
}

func (f *trackerFlags) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", f.logLevel)
	}
	f.level.Set(level)
	opts := &slog.HandlerOptions{Level: &f.level}
	switch f.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", f.logFormat)
}

func (f *trackerFlags) config(log *slog.Logger) (conntrack.Config, error) {
	if f.minDataPort > 65535 {
		return conntrack.Config{}, fmt.Errorf("--min-data-port %d: above 65535", f.minDataPort)
	}
	for name, v := range map[string]int{"--max-sessions": f.maxSessions, "--max-half-open": f.maxHalfOpen, "--max-pinholes": f.maxPinholes,
		"--max-pinholes-per-session": f.maxPerSession, "--max-line": f.maxLine} {
		if v <= 0 {
			return conntrack.Config{}, fmt.Errorf("%s %d: must be positive", name, v)
		}
	}
	if f.sessionsShare < 0 || f.halfOpenShare < 0 {
		return conntrack.Config{}, fmt.Errorf("--max-sessions-per-client and --max-half-open-per-client: want 0 (a sixteenth of the cap) or more")
	}
	if f.pinholeTimeout < time.Second || f.idleTimeout < time.Second || f.handshake < time.Second {
		return conntrack.Config{}, fmt.Errorf("--pinhole-timeout, --idle-timeout and --handshake-timeout must be at least 1s")
	}
	if f.pinholeTimeout > rules.MaxPinholeTimeout*time.Second {
		return conntrack.Config{}, fmt.Errorf("--pinhole-timeout %v: at most %v", f.pinholeTimeout, rules.MaxPinholeTimeout*time.Second)
	}
	return conntrack.Config{
		ControlPorts:          f.controlPorts,
		MinDataPort:           uint16(f.minDataPort),
		PinholeTimeout:        f.pinholeTimeout,
		IdleTimeout:           f.idleTimeout,
		HandshakeTimeout:      f.handshake,
		MaxSessions:           f.maxSessions,
		MaxHalfOpen:           f.maxHalfOpen,
		MaxSessionsPerClient:  f.sessionsShare,
		MaxHalfOpenPerClient:  f.halfOpenShare,
		MaxPinholes:           f.maxPinholes,
		MaxPinholesPerSession: f.maxPerSession,
		MaxLineLength:         f.maxLine,
		Logger:                log,
	}, nil
}

// parse parses args and builds the logger and the tracker configuration
// both commands start from.
func (f *trackerFlags) parse(fs *flag.FlagSet, args []string, help func(io.Writer), stdout, stderr io.Writer) (*slog.Logger, conntrack.Config, error) {
	if err := parseFlags(fs, args, help, stdout); err != nil {
		return nil, conntrack.Config{}, err
	}
	log, err := f.logger(stderr)
	if err != nil {
		return nil, conntrack.Config{}, err
	}
	cfg, err := f.config(log)
	return log, cfg, err
}

// usageError is a mistake on the command line: main prints it in one line
// with a pointer to --help, and exits 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// newFlagSet is a GNU-style flag set (flags before or after the
// arguments, --name and --name=value) that prints nothing itself.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// parseFlags parses args. --help prints help to stdout and returns
// flag.ErrHelp; a mistake becomes a usageError.
func parseFlags(fs *flag.FlagSet, args []string, help func(io.Writer), stdout io.Writer) error {
	err := fs.Parse(args)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, flag.ErrHelp):
		help(stdout)
		return flag.ErrHelp
	}
	return usageError{err}
}

// tableName is what ftpgate accepts as its table's name: what nft can
// type without quoting.
var tableName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]{0,63}$`)
