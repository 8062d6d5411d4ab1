package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/ftpgate/ftpgate/capture"
	"github.com/ftpgate/ftpgate/conntrack"
	"github.com/ftpgate/ftpgate/rules"
	flag "github.com/spf13/pflag"
)

// runVars are run's flags. They are defined afresh for each parse: a
// reload parses the command line and the file again into new ones.
type runVars struct {
	fs                                                                      *flag.FlagSet
	tf                                                                      trackerFlags
	nf                                                                      natFlags
	ff                                                                      ftpsFlags
	m                                                                       mark
	ifaces, table, capture, cpuProfile, metricsListen, statusSocket, config *string
	reportDir                                                               *string
	queueNum, nflogGroup                                                    *uint
	commitDelay                                                             *time.Duration
}

func newRunVars() *runVars {
	fs := newFlagSet("run")
	rv := &runVars{fs: fs, m: mark{value: 0x01000000, mask: 0x01000000}}
	rv.config = fs.String("config", DefaultConfigFile, "TOML configuration `file`: its keys are these flags' names, flags given here override it, and [[server]] tables scope ftpgate to some servers; read if it exists (SIGHUP reads it again)")
	rv.tf.register(fs, "info")
	rv.ifaces = fs.String("interface", "", "comma-separated `interfaces` whose FTP control traffic ftpgate watches (default: all): inline, control traffic in or out of them is copied and early data SYNs on them held; passive, the interfaces to capture on")
	fs.Var(&rv.m, "mark", "conntrack mark `VALUE/MASK` set on the first packet of each admitted data connection")
	rv.table = fs.String("table", rules.DefaultTable, "`name` of the inet table ftpgate owns")
	rv.capture = fs.String("capture", "inline", "how control packets reach ftpgate: inline (NFLOG copies, and NFQUEUE holds any data SYN that beats its pinhole, so none is dropped) or passive (AF_PACKET copy, for mirror/SPAN ports and labs)")
	rv.queueNum = fs.Uint("queue", 2121, "NFQUEUE `number` for --capture inline (0-65535): new control connections and early data SYNs wait there")
	rv.cpuProfile = fs.String("cpu-profile", "", "write a Go CPU profile to `file` until ftpgate stops (for performance work)")
	rv.commitDelay = fs.Duration("commit-delay", conntrack.DefaultCommitDelay, "with --capture inline: the `time` a new pinhole may live in ftpgate alone before it is committed to nftables and shows in nft list. A data SYN that comes sooner is held and admitted by ftpgate itself, and its pinhole never costs a commit. Longer: fewer commits, less CPU; 0 commits at once")
	rv.nf.register(fs)
	rv.ff.register(fs)
	rv.metricsListen = fs.String("metrics-listen", "", "`address` (host:port) on which to serve Prometheus metrics at /metrics; empty: off")
	rv.statusSocket = fs.String("status-socket", DefaultStatusSocket, "unix socket `path` on which ftpgate status is answered (mode 0600: root only); empty: none")
	rv.reportDir = fs.String("report", "", "`directory` in which to keep index.html, a report of what ftpgate sees and decides (a sequence diagram per session, as analyze --html draws them), rewritten every 2 s; for labs and classes. Passwords are not shown. Empty: off")
	rv.nflogGroup = fs.Uint("nflog-group", rules.DefaultLogGroup, "NFLOG `group` on which the kernel copies control segments to ftpgate (inline) and reports each pinhole's first packet (1-65535)")
	return rv
}

// load parses the command line, then the configuration file for what
// the command line left unset.
func (rv *runVars) load(args []string, help func(io.Writer), stdout io.Writer) ([]conntrack.ServerPolicy, []conntrack.FTPSRange, error) {
	if err := parseFlags(rv.fs, args, help, stdout); err != nil {
		return nil, nil, err
	}
	if rv.fs.NArg() > 0 {
		return nil, nil, usagef("no arguments expected, got %q", strings.Join(rv.fs.Args(), " "))
	}
	if *rv.config == "" {
		return nil, nil, nil
	}
	servers, ranges, err := applyConfigFile(rv.fs, *rv.config)
	if errors.Is(err, os.ErrNotExist) && !rv.fs.Changed("config") {
		return nil, nil, nil // no file at the default place: flags alone
	}
	if err != nil {
		return nil, nil, fmt.Errorf("configuration: %w", err)
	}
	return servers, ranges, nil
}

func cmdRun(args []string, stdout, stderr io.Writer) error {
	rv := newRunVars()
	fs, tf, nf := rv.fs, &rv.tf, &rv.nf
	ifaces, table, capture_, queueNum, cpuProfile, commitDelay := rv.ifaces, rv.table, rv.capture, rv.queueNum, rv.cpuProfile, rv.commitDelay
	metricsListen, statusSocket, nflogGroup := rv.metricsListen, rv.statusSocket, rv.nflogGroup
	help := func(w io.Writer) { writeHelp(w, runCommand, fs) }
	servers, serverFTPSRanges, err := rv.load(args, help, stdout)
	if err != nil {
		return err
	}
	m := rv.m
	log, err := tf.logger(stderr)
	if err != nil {
		return err
	}
	cfg, err := tf.config(log)
	if err != nil {
		return err
	}
	cfg.Servers = servers
	if err := rv.ff.apply(&cfg); err != nil {
		return err
	}
	cfg.FTPSRanges = append(cfg.FTPSRanges, serverFTPSRanges...)
	if !tableName.MatchString(*table) {
		return usagef("--table %q: want a letter, then up to 63 letters, digits, _ or -", *table)
	}
	var names []string
	if *ifaces != "" {
		for _, n := range strings.Split(*ifaces, ",") {
			if n = strings.TrimSpace(n); n != "" {
				names = append(names, n)
			}
		}
	}

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	// One goroutine does the tracking; more Go processors only add
	// threads spinning for work, and on a small firewall that CPU is taken
	// from the forwarding itself (measured: about 30% less CPU per
	// transfer). GOMAXPROCS in the environment overrides this.
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	switch {
	case *commitDelay < 0:
		return fmt.Errorf("--commit-delay %v: want 0 or more", *commitDelay)
	case *commitDelay == 0:
		cfg.CommitDelay = -1 // at once; the tracker's zero is its default
	default:
		cfg.CommitDelay = *commitDelay
	}
	if *nflogGroup == 0 || *nflogGroup > 65535 {
		return fmt.Errorf("--nflog-group %d: want 1-65535", *nflogGroup)
	}
	if *capture_ == "passive" && nf.mode == "on" && flagSet(fs, "nat") {
		return fmt.Errorf("--nat on needs --capture inline: the control proxy takes connections over in the kernel's path")
	}
	natOn, err := nf.enabled(*capture_ == "inline", m)
	if err != nil {
		return err
	}
	cfg.NATPorts, cfg.NATPortsPerClient = nf.ports, nf.portsShare
	rcfg := rules.Config{
		Table: *table, Mark: m.value, MarkMask: m.mask, LogGroup: uint16(*nflogGroup),
		MaxPinholes: uint32(cfg.MaxPinholes), MaxPeers: uint32(2 * (cfg.MaxSessions + cfg.MaxHalfOpen)), Logger: log,
	}
	if natOn {
		rcfg.NAT = nf.rules(cfg.ControlPorts)
	}
	if *capture_ == "inline" {
		rcfg.Interfaces = names
	}
	fw, err := rules.Open(rcfg)
	if err != nil {
		if errors.Is(err, rules.ErrNoNftables) {
			return fmt.Errorf("%w\nftpgate will not run blind: it must be able to program nftables (root or CAP_NET_ADMIN, kernel with nf_tables)", err)
		}
		return err
	}
	defer func() {
		if err := fw.Close(); err != nil {
			log.Error("removing nftables table", "error", err)
		}
	}()
	// Announcements made from this host's own sockets are checked
	// against them (see conntrack.LocalSockets).
	sockets, err := capture.OpenLocalSockets()
	if err != nil {
		return err
	}
	defer sockets.Close()
	cfg.LocalSockets = sockets
	if natOn {
		pp := &publicPorts{fw: fw, sockets: sockets, log: log}
		pp.warnOverlap(nf.ports)
		cfg.PublicPortInUse = pp.inUse
	}
	// The group carries the reports of used pinholes in both captures,
	// and the copies of control segments inline.
	logged, err := capture.OpenLog(uint16(*nflogGroup), 0, classifyLog)
	if err != nil {
		return fmt.Errorf("%w\nftpgate will not run blind: it must be able to program nftables (root or CAP_NET_ADMIN, kernel with nf_tables)", err)
	}
	defer logged.Close()
	sources := []capture.Source{logged}
	var passive []*capture.AFPacketSource
	captureDesc := ""
	switch *capture_ {
	case "passive":
		ifs := names
		if len(ifs) == 0 {
			ifs = []string{""}
		}
		for _, name := range ifs {
			src, err := capture.OpenAFPacket(name, cfg.ControlPorts, log)
			if errors.Is(err, os.ErrPermission) {
				return fmt.Errorf("%w (passive capture needs root or CAP_NET_RAW)", err)
			}
			if err != nil {
				return err
			}
			defer src.Close()
			sources = append(sources, src)
			passive = append(passive, src)
		}
		cfg.CommitDelay = -1 // the client races the pinhole: no time to lose
		captureDesc = "passive (AF_PACKET copy; a fast client's data SYN can race the pinhole)"
	case "inline":
		for _, name := range names {
			if _, err := net.InterfaceByName(name); err != nil {
				// Matched by name in the kernel: it works once the
				// interface exists (a PPP or VPN link that comes later).
				log.Warn("--interface names an interface that does not exist now", "interface", name)
			}
		}
		if *queueNum > 65535 {
			return fmt.Errorf("--queue %d: want 0-65535", *queueNum)
		}
		src, err := capture.OpenQueue(uint16(*queueNum), 8192, 0)
		if err != nil {
			return err
		}
		defer src.Close()
		src.Mark, src.MarkMask = m.value, m.mask
		mode, err := fw.AddInlineRules(uint16(*queueNum), uint16(*nflogGroup), cfg.ControlPorts)
		if err != nil {
			return err
		}
		// Copies come in batches; a held data SYN flushes them (see
		// rules.AddInlineRules). Under the lab's load one wakeup then
		// reads about five copies instead of one.
		if err := logged.SetBatch(64, 32<<10, 0); err != nil {
			return err
		}
		sources = append(sources, src)
		if natOn {
			proxy, routes, err := nf.startProxy(log)
			if err != nil {
				return fmt.Errorf("starting the control proxy for NAT (--nat off runs without it): %w", err)
			}
			defer routes.Close()
			defer proxy.Close()
			sources = append(sources, proxy)
			cfg.OnProxiedEnd = proxy.CloseConn
		}
		cfg.Inline = true
		warnConntrackLax(log)
		captureDesc = fmt.Sprintf("inline (copies on NFLOG group %d; new control connections and early data SYNs held on queue %d, %s, bypass if ftpgate is gone)",
			*nflogGroup, *queueNum, mode)
	default:
		return fmt.Errorf("--capture %q: want inline or passive", *capture_)
	}

	cfg.ReportWindow = 2 * time.Second
	cfg.ConfirmAdmitted = true
	line := fmt.Sprintf("ct mark & %#08x == %#08x accept", m.mask, m.value)
	warnRuleset(fw, line, log)
	if *rv.reportDir != "" {
		finish, err := startReport(ctx, *rv.reportDir, &cfg, log)
		if err != nil {
			return err
		}
		defer finish()
	}
	var tr *conntrack.Tracker
	met := newMetrics(func() conntrack.Stats { return tr.Snapshot() })
	tr = conntrack.NewTracker(cfg, timedBackend{fw, met.commitTime})
	if *metricsListen != "" {
		if err := met.serve(ctx, *metricsListen, log); err != nil {
			return err
		}
	}
	calls, err := capture.NewCalls()
	if err != nil {
		return err
	}
	defer calls.Close()
	sources = append(sources, calls)
	if *statusSocket != "" {
		ss, err := startStatus(*statusSocket, calls, func() any { return daemonStatus{Version: version, Status: tr.Status()} }, log)
		if err != nil {
			return err
		}
		defer ss.Close()
	}
	log.Info("ftpgate running", "version", version, "capture", captureDesc,
		"interfaces", ifaceList(names), "control_ports", tf.controlPorts.String(),
		"table", "inet "+*table, "mark", m.String(),
		"ruleset_line", line,
		"nat", natDesc(natOn, *nf))
	stopReload := reloadOnHUP(ctx, &reloader{rv: rv, args: args, servers: servers, ranges: serverFTPSRanges,
		to: reloadTargets{tr: tr, fw: fw, passive: passive}, calls: calls, log: log})
	defer stopReload()
	err = capture.Run(ctx, &daemonLoop{t: tr, log: logged, heldWait: met.heldWait}, sources...)
	tr.CloseAll("daemon stopping")
	if cerr := tr.Commit(); err == nil {
		err = cerr
	}
	st := tr.Stats()
	datagrams, records := logged.Counts()
	log.Info("ftpgate stopped", "sessions", st.SessionsStarted, "channels_opened", st.ChannelsOpened,
		"channels_refused", st.ChannelsRefused, "lines", st.Lines, "lines_too_long", st.LinesTooLong,
		"gap_bytes", st.GapBytes, "sessions_refused", st.SessionsRefused, "backend_errors", st.BackendErrors,
		"syns_held", st.SYNsHeld, "syns_admitted", st.SYNsAdmitted, "adds_cancelled", st.AddsCancelled, "copy_overflows", st.CopiesLost,
		"log_datagrams", datagrams, "log_records", records,
		"data_admitted", st.DataAdmitted, "admitted_dropped", st.AdmittedDropped,
		"sessions_proxied", st.SessionsProxied, "nat_rewrites", st.NATRewrites, "nat_mappings", st.NATMappings)
	return err
}

// warnRuleset warns about every filter chain of the admin's that will drop
// what ftpgate admits.
func warnRuleset(fw *rules.Nftables, line string, log *slog.Logger) {
	problems, err := fw.CheckRuleset()
	if err != nil {
		log.Warn("could not check the ruleset for the accept line", "error", err)
		return
	}
	for _, p := range problems {
		log.Warn("your ruleset will drop the data connections ftpgate admits: add the accept line before the drop",
			"chain", fmt.Sprintf("%s %s %s", p.Family, p.Table, p.Chain), "hook", p.Hook, "drops_by", p.Drop, "add", line)
	}
}

// flagValues are the values of every flag, as text.
func flagValues(fs *flag.FlagSet) map[string]string {
	m := map[string]string{}
	fs.VisitAll(func(f *flag.Flag) { m[f.Name] = f.Value.String() })
	return m
}

func natDesc(on bool, nf natFlags) string {
	if !on {
		return "off"
	}
	return fmt.Sprintf("on (translated control connections through the control proxy on port %d; public ports %s)", nf.proxyPort, nf.ports.String())
}

// flagSet reports whether the flag was given on the command line.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func ifaceList(n []string) string {
	if len(n) == 0 {
		return "all"
	}
	return strings.Join(n, ",")
}

// warnConntrackLax warns when the kernel's conntrack, whose validation
// inline capture relies on, has been told to be lax in this namespace.
func warnConntrackLax(log *slog.Logger) {
	read := func(name string) string {
		b, err := os.ReadFile("/proc/sys/net/netfilter/" + name)
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(b))
	}
	if read("nf_conntrack_checksum") == "0" {
		log.Warn("net.netfilter.nf_conntrack_checksum is 0: conntrack does not check TCP checksums, and ftpgate's own check cannot tell a forged segment from one whose checksum a local sender left to the hardware; set it to 1")
	}
	if read("nf_conntrack_tcp_be_liberal") == "1" {
		log.Warn("net.netfilter.nf_conntrack_tcp_be_liberal is 1: conntrack accepts TCP segments outside the window, which ftpgate then copies; set it to 0")
	}
}

// runDescription is run's help, and its part of the man page.
const runDescription = `Watches FTP control connections and opens one nftables pinhole per accepted
data channel in its own table, 'inet ftpgate', created with the owner flag so
that the kernel removes it even if ftpgate is killed.

With --capture inline (the default) the kernel copies FTP control segments
to ftpgate (NFLOG) without delaying them, and holds (NFQUEUE: the nft queue
statement, or the xtables NFQUEUE target where the kernel lacks it) only
two kinds of packet: the SYN of a new control connection, until ftpgate
knows the session's hosts, and a data SYN between those hosts that arrives
before its pinhole. ftpgate then reads every copy logged before it (the
announcement among them), uses up the pinhole and sends the SYN back
through its chain, so a client that connects the instant it reads a 227
reply waits a fraction of a millisecond, not a retransmission. If ftpgate dies the queue
is bypassed and the table vanishes: control traffic keeps flowing.
--capture passive watches a copy (AF_PACKET with a kernel filter for the
control ports) for mirror/SPAN ports and labs; there a fast client's first
data SYN can beat the pinhole and is retransmitted about a second later.

A pinhole admits one TCP connection from the peer that will connect to the
announced address and port. Its first packet gets the conntrack mark; add
this line to your ruleset before its drop (with your --mark):

  ct mark & 0x01000000 == 0x01000000 accept

A pinhole closes when its connection starts, when the session's next data
command supersedes it, when the control session ends (FIN, RST, idle), after
--pinhole-timeout, and when ftpgate stops (SIGINT/SIGTERM: exit 0).

Only what the endpoints really exchanged counts: inline, ftpgate copies
only control segments that conntrack validated (checksum, window) for an
established connection, that came in on the interface the route back to
their source uses, and that your ruleset let through; everywhere it checks
checksums and windows again and follows both directions in the order the
hosts saw them. A reply pairs only with a command the server had
acknowledged when it wrote the reply; the greeting pairs with nothing.

Lines count only as their receiver frames them: one limit (--max-line) on
every path, a line too long is dropped whole; a server that ends its lines
with CR LF starts no reply after a bare LF (an echo of a client's argument),
and a command ended by a bare LF leaves pairing uncertain.

Refused (and logged with the reason): PORT/EPRT/LPRT the server did not
accept with 2xx; 227/228/229 replies to no PASV/EPSV/LPSV; announced
addresses other than the announcing side's control address; ports below
--min-data-port; a port of this host that is not a listening socket of the
user owning the announcing control connection (or of any user, for root's);
active mode while pairing is uncertain, and for the rest of a session that
lost bytes; anything past a cap or past a client's share of it (per
address, per /64 for IPv6). After a 234 that answers an AUTH the session is
not parsed until TLS really ends after CCC; its FTPS range (--ftps-passive-
ports) closes unless the TLS handshake completes within --handshake-timeout.

On a NAT gateway (--nat on, the default with inline capture), a control
connection your own NAT rules translate (masquerade, dnat) has its first SYN
dropped after all of your rules accepted it; the client's retry (about a
second later) goes to ftpgate's control proxy (tproxy, and a policy routing
rule ftpgate adds), which connects to the server from the client's address.
It rewrites announcements whose address differs on the far side (PORT/EPRT
of a masqueraded client, 227/229 of a server behind a port forward) to the
public address and a port from --nat-ports (never the port announced, one
this host listens on, or one your rules forward), and maps each data
connection in the kernel (DNAT, and SNAT where needed): a 227/229's before
the client sees it, a PORT/EPRT's once the server accepted it. Add the ruleset line to your input chain too: proxied control
connections arrive there. A restart of ftpgate ends proxied sessions.

Logs: one line per session start and end, and per channel opened, refused
or closed. In a channel's line, orig_h is the host that will open the data
connection (the client in passive mode, the server in active mode) and
resp_h:resp_p where it will connect: "orig_h may connect to resp_h:resp_p,
once". --report DIR draws the same as a page for people.

`
