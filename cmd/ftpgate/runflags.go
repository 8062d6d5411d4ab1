package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/ftpgate/ftpgate/conntrack"
	"github.com/ftpgate/ftpgate/rules"
	flag "github.com/spf13/pflag"
)

// runVars are run's flags. They are defined afresh for each parse: a
// reload parses the command line and the file again into new ones. A
// plain record of flag values, like trackerFlags.
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

// runPlan is what run settles from its flags and its configuration file
// before it opens anything, and what a reload compares against.
type runPlan struct {
	rv   *runVars
	args []string // parsed again by each reload
	log  *slog.Logger
	// cfg is the tracker's configuration; the steps that open the
	// kernel's side complete it (local sockets, capture, NAT, report).
	cfg conntrack.Config
	// servers and serverRanges are the file's [[server]] tables: the
	// policies and their FTPS ranges.
	servers      []conntrack.ServerPolicy
	serverRanges []conntrack.FTPSRange
	ifaces       []string // --interface; none: all
	natOn        bool     // set by checkKernelFlags
}

// planRun parses the command line and the configuration file and checks
// what the tracker's configuration needs.
func planRun(args []string, stdout, stderr io.Writer) (*runPlan, error) {
	rv := newRunVars()
	help := func(w io.Writer) { writeHelp(w, runCommand, rv.fs) }
	servers, serverRanges, err := rv.load(args, help, stdout)
	if err != nil {
		return nil, err
	}
	log, err := rv.tf.logger(stderr)
	if err != nil {
		return nil, err
	}
	cfg, err := rv.tf.config(log)
	if err != nil {
		return nil, err
	}
	cfg.Servers = servers
	if err := rv.ff.apply(&cfg); err != nil {
		return nil, err
	}
	cfg.FTPSRanges = append(cfg.FTPSRanges, serverRanges...)
	if !tableName.MatchString(*rv.table) {
		return nil, usagef("--table %q: want a letter, then up to 63 letters, digits, _ or -", *rv.table)
	}
	if strings.HasPrefix(*rv.table, "ftpgate_probe_") {
		return nil, usagef("--table %q: names starting with ftpgate_probe_ are the kernel probe's", *rv.table)
	}
	return &runPlan{rv: rv, args: args, log: log, cfg: cfg, servers: servers, serverRanges: serverRanges,
		ifaces: splitInterfaces(*rv.ifaces)}, nil
}

// splitInterfaces is --interface as names; nil when it names none.
func splitInterfaces(list string) []string {
	if list == "" {
		return nil
	}
	var names []string
	for _, n := range strings.Split(list, ",") {
		if n = strings.TrimSpace(n); n != "" {
			names = append(names, n)
		}
	}
	return names
}

// checkKernelFlags checks the flags of what ftpgate asks of the kernel
// (commits, the NFLOG group, NAT) and puts them in the tracker's
// configuration.
func (p *runPlan) checkKernelFlags() error {
	rv := p.rv
	switch {
	case *rv.commitDelay < 0:
		return fmt.Errorf("--commit-delay %v: want 0 or more", *rv.commitDelay)
	case *rv.commitDelay == 0:
		p.cfg.CommitDelay = -1 // at once; the tracker's zero is its default
	default:
		p.cfg.CommitDelay = *rv.commitDelay
	}
	if *rv.nflogGroup == 0 || *rv.nflogGroup > 65535 {
		return fmt.Errorf("--nflog-group %d: want 1-65535", *rv.nflogGroup)
	}
	if *rv.capture == "passive" && rv.nf.mode == "on" && rv.fs.Changed("nat") {
		return fmt.Errorf("--nat on needs --capture inline: the control proxy takes connections over in the kernel's path")
	}
	natOn, err := rv.nf.enabled(*rv.capture == "inline", rv.m)
	if err != nil {
		return err
	}
	p.natOn = natOn
	p.cfg.NATPorts, p.cfg.NATPortsPerClient = rv.nf.ports, rv.nf.portsShare
	return nil
}

// flagValues are the values of every flag, as text.
func flagValues(fs *flag.FlagSet) map[string]string {
	m := map[string]string{}
	fs.VisitAll(func(f *flag.Flag) { m[f.Name] = f.Value.String() })
	return m
}
