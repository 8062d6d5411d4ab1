package conntrack

import (
	"log/slog"
	"net/netip"
	"time"
)

// DefaultCommitDelay is how long a new pinhole waits, under inline
// capture, before it is committed. Most data SYNs come within it and are
// admitted from ftpgate's own table (see Tracker.Tick); on the lab, going
// from 2 ms to 10 ms cut ftpgate's CPU per transfer by 10-15%.
const DefaultCommitDelay = 10 * time.Millisecond

// Defaults of the limits on cheap traffic.
const (
	// DefaultHandshakeTimeout: a control connection must carry its first
	// byte of FTP (the server's greeting, normally at once) within this
	// time of its first packet, or it is forgotten.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultMaxHalfOpen control connections that have carried no FTP yet
	// are tracked at most; they do not count against MaxSessions.
	DefaultMaxHalfOpen = 4096
	// DefaultReorderWait: bytes that one side acknowledged but ftpgate
	// has not seen are given up as lost after this long (passive capture
	// and files; inline copies come in order and are given up at once).
	DefaultReorderWait = time.Second
	// closeLinger ends a session this long after its first FIN, if the
	// second never shows.
	closeLinger = time.Minute
	// tombstoneFor is how long the segments of an ended control
	// connection are recognised and ignored rather than picked up anew.
	tombstoneFor  = 2 * time.Minute
	maxTombstones = 65536
)

// Config holds the tracker's limits and policy. Zero values take the
// defaults named on each field.
type Config struct {
	ControlPorts     []uint16      // default [21]
	MinDataPort      uint16        // default 1024
	PinholeTimeout   time.Duration // default 60s
	IdleTimeout      time.Duration // control session idle limit, default 30m
	HandshakeTimeout time.Duration // default DefaultHandshakeTimeout
	MaxSessions      int           // tracked control sessions that carried FTP, default 65536
	MaxHalfOpen      int           // default DefaultMaxHalfOpen
	// Each client's share (per address, per /64 for IPv6) of
	// MaxSessions and MaxHalfOpen; default a sixteenth, at least 4.
	MaxSessionsPerClient  int
	MaxHalfOpenPerClient  int
	MaxPinholesPerSession int // default 4
	MaxPinholes           int // in all, default 65536
	MaxLineLength         int // bytes without the line end, default 2048
	// Inline says the packets are the kernel's copies of segments its
	// conntrack validated, in the order the kernel handled them: bytes
	// one side acknowledged but ftpgate never saw are then lost at once,
	// not waited for (see ReorderWait).
	Inline bool
	// ReorderWait is how long acknowledged but unseen bytes are waited
	// for otherwise; default DefaultReorderWait.
	ReorderWait time.Duration
	// ReportWindow is how long the log line of a pinhole closed for a
	// reason of the control session waits for a late kernel report that
	// its data connection had started (see PinholeConsumed). 0 logs at
	// once, as for capture files, where there are no such reports.
	ReportWindow time.Duration
	// ConfirmAdmitted: the kernel reports each admitted data connection
	// again after the admin's filter chains (AdmittedReport), and a used
	// pinhole whose connection is not reported within ConfirmWait
	// (default 2s) is logged and counted as dropped by the ruleset.
	ConfirmAdmitted bool
	ConfirmWait     time.Duration
	// CommitDelay is how long inline capture may leave pinhole changes
	// uncommitted; see Tracker.Tick. Zero means DefaultCommitDelay; a
	// negative value commits at once.
	CommitDelay time.Duration
	// NATPorts is the range of ports ftpgate hands out on public
	// addresses for announcements it rewrites on proxied sessions.
	// Zero: DefaultNATPorts. NATPortsPerClient is one client's share of
	// them (per address, per /64 for IPv6); zero: a sixteenth, at least 4.
	NATPorts          [2]uint16
	NATPortsPerClient int
	// Servers, if any, are the only FTP servers ftpgate serves, each with
	// its own policy (see ServerPolicy); announcements on sessions to
	// others are refused.
	Servers []ServerPolicy
	// FTPS: the passive ranges of servers, opened to one client while
	// its session is encrypted (see scopedTable.openScoped); the control ports
	// of implicit FTPS (default 990); the ports of clients that implicit
	// FTPS servers may connect to from port 989 (active mode); the caps on
	// open ranges (per client: per address, per /64 for IPv6).
	FTPSRanges         []FTPSRange
	ImplicitPorts      []uint16
	ActiveRanges       []ActiveRange
	MaxScopedPerClient int
	MaxScoped          int
	// LocalSockets, if set, answers for announcements made from this
	// host's own sockets (see checkLocal). The daemon sets it;
	// analyze, which sees no host, does not.
	LocalSockets LocalSockets
	// PublicPortInUse, if set, reports public address:ports that NAT
	// must not hand out: the gateway listens there, or the admin's own
	// rules forward them.
	PublicPortInUse func(netip.AddrPort) bool
	// ProxyConns, if set, is told to close the connections of the
	// control proxy whose sessions the tracker ended itself (a timeout,
	// a reload).
	ProxyConns ProxyConns
	Logger     *slog.Logger
	// Observer, if set, is told each session's story: channels and their
	// verdicts, lines, ends (reports, analyze).
	Observer Observer
	// ConsumeOnSYN makes a data SYN the tracker sees use its pinhole, as
	// the kernel's rule would: for analyze, where no kernel does. Each
	// such SYN goes to the Observer.
	ConsumeOnSYN bool
}

func (c *Config) setDefaults() {
	if len(c.ControlPorts) == 0 {
		c.ControlPorts = []uint16{21}
	}
	if c.PinholeTimeout == 0 {
		c.PinholeTimeout = 60 * time.Second
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 30 * time.Minute
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.MaxSessions == 0 {
		c.MaxSessions = 65536
	}
	if c.MaxHalfOpen == 0 {
		c.MaxHalfOpen = DefaultMaxHalfOpen
	}
	if c.MaxSessionsPerClient == 0 {
		c.MaxSessionsPerClient = DefaultShare(c.MaxSessions)
	}
	if c.MaxHalfOpenPerClient == 0 {
		c.MaxHalfOpenPerClient = DefaultShare(c.MaxHalfOpen)
	}
	if c.MaxPinholesPerSession == 0 {
		c.MaxPinholesPerSession = 4
	}
	if c.MaxPinholes == 0 {
		c.MaxPinholes = 65536
	}
	if c.MaxLineLength == 0 {
		c.MaxLineLength = 2048
	}
	switch {
	case c.Inline:
		c.ReorderWait = 0
	case c.ReorderWait == 0:
		c.ReorderWait = DefaultReorderWait
	}
	if c.ImplicitPorts == nil {
		c.ImplicitPorts = []uint16{990}
	}
	if c.MaxScopedPerClient == 0 {
		c.MaxScopedPerClient = DefaultMaxScopedPerClient
	}
	if c.MaxScoped == 0 {
		c.MaxScoped = DefaultMaxScoped
	}
	if c.ConfirmWait == 0 {
		c.ConfirmWait = 2 * time.Second
	}
	if c.NATPorts == [2]uint16{} {
		c.NATPorts = DefaultNATPorts
	}
	if c.NATPortsPerClient == 0 {
		c.NATPortsPerClient = DefaultShare(int(c.NATPorts[1]) - int(c.NATPorts[0]) + 1)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Observer == nil {
		c.Observer = NopObserver{}
	}
	switch {
	case c.CommitDelay == 0:
		c.CommitDelay = DefaultCommitDelay
	case c.CommitDelay < 0:
		c.CommitDelay = 0
	}
}

// Observe adds o to what the tracker tells each session's story to.
func (c *Config) Observe(o Observer) {
	switch prev := c.Observer.(type) {
	case nil, NopObserver:
		c.Observer = o
	case Observers:
		c.Observer = append(prev[:len(prev):len(prev)], o)
	default:
		c.Observer = Observers{prev, o}
	}
}

// DefaultShare is the share of a cap one client may hold unless told
// otherwise: a sixteenth, at least 4.
func DefaultShare(limit int) int { return max(4, limit/16) }

// LocalSockets answers what the tracker must know of this host's own
// sockets.
type LocalSockets interface {
	// IsLocal reports whether the address is one of this host's.
	IsLocal(netip.Addr) bool
	// Owner returns the user owning this host's socket of the
	// connection local <-> remote.
	Owner(local, remote netip.AddrPort) (uid uint32, ok bool)
	// Listener returns the user owning the listening socket of this host
	// that a connection from remote to local would reach.
	Listener(local, remote netip.AddrPort) (uid uint32, ok bool)
}

// DefaultNATPorts lies above Linux's default ephemeral range
// (net.ipv4.ip_local_port_range 32768-60999), so that the gateway's own
// outgoing connections and masquerade, which keeps a client's port when
// it can, rarely hold a port ftpgate hands out.
var DefaultNATPorts = [2]uint16{61000, 65535}
