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
)

// cmdRun runs the daemon. Its steps keep this order because each needs
// what the ones before it opened (the kernel's features are probed
// before anything is bound or built), and because the table takes traffic
// as soon as its rules exist: every socket its rules send to (the NFLOG
// group, the queue, the control proxy) is bound and configured before
// the table is made, so that nothing it sends arrives unread or before a
// socket's configuration is answered; the table and its rules are made
// in a row; the tracker's configuration is complete before the tracker
// is made from it, and the tracker is there before the status socket
// that reads it. What arrives meanwhile waits in the sockets (held SYNs
// in the queue) for the loop, which says it is ready in its first round.
func cmdRun(args []string, stdout, stderr io.Writer) error {
	plan, err := planRun(args, stdout, stderr)
	if err != nil {
		return err
	}
	d := &daemon{runPlan: plan}
	defer d.closers.closeAll()
	if err := d.startCPUProfile(); err != nil {
		return err
	}
	useOneProcessor()
	ctx := d.stopOnSignal()
	if err := plan.checkKernelFlags(); err != nil {
		return err
	}
	if err := d.probeFirewall(); err != nil {
		return err
	}
	if err := d.checkKernel(); err != nil {
		return err
	}
	if err := d.openLocalSockets(); err != nil {
		return err
	}
	if err := d.openSources(); err != nil {
		return err
	}
	d.kernel.log(d.log)
	if err := d.openFirewall(); err != nil {
		return err
	}
	if err := d.startTracker(ctx); err != nil {
		return err
	}
	if err := d.startSideServices(ctx); err != nil {
		return err
	}
	d.closers.push(reloadOnHUP(ctx, d.reloader()))
	return d.run(ctx)
}

// daemon is what a run has opened.
type daemon struct {
	*runPlan
	fw          *rules.Nftables
	sockets     *capture.LocalSockets
	logged      *capture.LogReader // the NFLOG group: copies and reports
	sources     []capture.Source   // what the loop reads, logged first
	passive     []*capture.AFPacketSource
	captureDesc string // for the start's log line
	tr          *conntrack.Tracker
	met         *metrics
	calls       *capture.Calls
	// loop is what the loop does with what it reads; the proxy's source
	// points at it before the tracker exists (run gives it the tracker).
	loop    daemonLoop
	closers closeStack
	kernel  kernelCheck // what the kernel can do, logged once the sources say the rest
}

// closeStack is how to close what a run opened. Each step pushes its
// closers as it opens; closeAll runs them last first, so a start that
// fails half way closes exactly what it had opened, in the order the
// deferred calls of one function would: nothing stays behind, no table,
// no socket, no route.
type closeStack []func()

func (s *closeStack) push(f func()) { *s = append(*s, f) }

func (s *closeStack) pushCloser(c io.Closer) { s.push(func() { _ = c.Close() }) }

func (s *closeStack) closeAll() {
	for i := len(*s) - 1; i >= 0; i-- {
		(*s)[i]()
	}
}

func (d *daemon) startCPUProfile() error {
	path := *d.rv.cpuProfile
	if path == "" {
		return nil
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("--cpu-profile: %w", err)
	}
	d.closers.pushCloser(f)
	if err := pprof.StartCPUProfile(f); err != nil {
		return fmt.Errorf("--cpu-profile: %w", err)
	}
	d.closers.push(pprof.StopCPUProfile)
	return nil
}

// useOneProcessor: one goroutine does the tracking; more Go processors
// only add threads spinning for work, and on a small firewall that CPU is
// taken from the forwarding itself (measured: about 30% less CPU per
// transfer). GOMAXPROCS in the environment overrides this.
func useOneProcessor() {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
}

// stopOnSignal returns the run's context: SIGINT and SIGTERM end it.
func (d *daemon) stopOnSignal() context.Context {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	d.closers.push(stop)
	// A reload asked for while ftpgate starts (systemctl reload racing
	// the start) would otherwise kill it: SIGHUP's default. The file is
	// read at start anyway; reloadOnHUP takes the signal over once ready.
	signal.Ignore(syscall.SIGHUP)
	return ctx
}

// notBlind follows the errors that leave ftpgate unable to program the
// kernel, since the cure is the same for all.
const notBlind = "ftpgate will not run blind: it must be able to program nftables (root or CAP_NET_ADMIN, kernel with nf_tables)"

// probeFirewall refuses, before any socket is bound, to start where the
// table cannot be made: without the privilege, or while another ftpgate
// owns it. Bound first, the NFLOG group would refuse in both cases with
// the same EPERM, which tells neither.
func (d *daemon) probeFirewall() error {
	err := rules.CheckTable(*d.rv.table, 0)
	if errors.Is(err, rules.ErrNoNftables) {
		return fmt.Errorf("%w\n%s", err, notBlind)
	}
	return err
}

// openFirewall creates ftpgate's table and, inline, the rules that copy
// and hold control traffic right after: from then on the kernel sends
// what ftpgate reads.
func (d *daemon) openFirewall() error {
	rv := d.rv
	rcfg := rules.Config{
		Table: *rv.table, Mark: rv.m.value, MarkMask: rv.m.mask, LogGroup: uint16(*rv.nflogGroup),
		MaxPinholes: uint32(d.cfg.MaxPinholes), MaxPeers: uint32(2 * (d.cfg.MaxSessions + d.cfg.MaxHalfOpen)), Logger: d.log,
	}
	if d.natOn {
		rcfg.NAT = rv.nf.rules(d.cfg.ControlPorts, d.cfg.IdleTimeout)
	}
	if *rv.capture == "inline" {
		rcfg.Interfaces = d.ifaces
	}
	fw, err := rules.Open(rcfg)
	if err != nil {
		// The privilege was proven by probeFirewall and the features by
		// checkKernel: what is left is a kernel refusing something the
		// probes do not cover.
		return fmt.Errorf("%w (ftpgate kernel lists what this kernel can do)", err)
	}
	d.fw = fw
	d.closers.push(func() {
		if err := fw.Close(); err != nil {
			d.log.Error("removing nftables table", "error", err)
		}
	})
	if d.loop.packets != nil {
		d.closers.push(d.stopPacketPath)
		d.readdTranslated()
	}
	if *rv.capture != "inline" {
		return nil
	}
	mode, err := fw.AddInlineRules(uint16(*rv.queueNum), uint16(*rv.nflogGroup), d.cfg.ControlPorts)
	if err != nil {
		return err
	}
	d.captureDesc = fmt.Sprintf("inline (copies on NFLOG group %d; new control connections and early data SYNs held on queue %d, %s, bypass if ftpgate is gone)",
		*rv.nflogGroup, *rv.queueNum, mode)
	return nil
}

// openLocalSockets lets the tracker check announcements made from this
// host's own sockets against them (see conntrack.LocalSockets), and NAT
// keep clear of the public ports this host listens on.
func (d *daemon) openLocalSockets() error {
	sockets, err := capture.OpenLocalSockets()
	if err != nil {
		return err
	}
	d.closers.pushCloser(sockets)
	d.sockets = sockets
	d.cfg.LocalSockets = sockets
	return nil
}

// openSources opens what the loop reads. The NFLOG group carries the
// reports of used pinholes in both captures, and the copies of control
// segments inline.
func (d *daemon) openSources() error {
	logged, err := capture.OpenLog(uint16(*d.rv.nflogGroup), 0, classifyLog)
	if err != nil {
		// Privilege was proven by probeFirewall; a group in use is the
		// usual cause now.
		return fmt.Errorf("%w (is another program logging to NFLOG group %d? see --nflog-group)", err, *d.rv.nflogGroup)
	}
	d.closers.pushCloser(logged)
	d.logged = logged
	d.sources = []capture.Source{logged}
	switch *d.rv.capture {
	case "passive":
		return d.openPassive()
	case "inline":
		return d.openInline()
	}
	return fmt.Errorf("--capture %q: want inline or passive", *d.rv.capture)
}

func (d *daemon) openPassive() error {
	ifaces := d.ifaces
	if len(ifaces) == 0 {
		ifaces = []string{""} // every interface
	}
	for _, name := range ifaces {
		src, err := capture.OpenAFPacket(name, d.cfg.ControlPorts, d.log)
		if errors.Is(err, os.ErrPermission) {
			return fmt.Errorf("%w (passive capture needs root or CAP_NET_RAW)", err)
		}
		if err != nil {
			return err
		}
		d.closers.pushCloser(src)
		d.sources = append(d.sources, src)
		d.passive = append(d.passive, src)
	}
	d.cfg.CommitDelay = -1 // the client races the pinhole: no time to lose
	d.captureDesc = "passive (AF_PACKET copy; a fast client's data SYN can race the pinhole)"
	return nil
}

// openInline opens the queue and sets its mark, and sets the NFLOG
// group's batching, before openFirewall adds the rules that send them
// packets: the first packet held is read, and admitted with the mark
// ftpgate means, and no copy arrives while the group is configured.
func (d *daemon) openInline() error {
	rv := d.rv
	for _, name := range d.ifaces {
		if _, err := net.InterfaceByName(name); err != nil {
			// Matched by name in the kernel: it works once the
			// interface exists (a PPP or VPN link that comes later).
			d.log.Warn("--interface names an interface that does not exist now", "interface", name)
		}
	}
	if *rv.queueNum > 65535 {
		return fmt.Errorf("--queue %d: want 0-65535", *rv.queueNum)
	}
	queue, err := capture.OpenQueue(uint16(*rv.queueNum), 8192, 0)
	if err != nil {
		return err
	}
	d.closers.pushCloser(queue)
	queue.Mark, queue.MarkMask = rv.m.value, rv.m.mask
	// Copies come in batches; a held data SYN flushes them (see
	// rules.AddInlineRules). Under the lab's load one wakeup then
	// reads about five copies instead of one.
	if err := d.logged.SetBatch(64, 32<<10, 0); err != nil {
		return err
	}
	d.sources = append(d.sources, queue)
	d.kernel.queueGlue, d.kernel.glueErr, d.kernel.glueKnown = queue.Conntrack, queue.ConntrackErr, true
	switch {
	case d.natOn && d.rv.nf.packet():
		if err := d.startPacketPath(); err != nil {
			return err
		}
		// Where the kernel shifts, new control connections carry the
		// helper stub, which a held SYN must lose before source NAT
		// (capture.QueueSource.ClearHelpers).
		queue.ClearHelpers = d.rv.nf.kernelShifts
	case d.natOn:
		if err := d.startProxy(); err != nil {
			return err
		}
	}
	d.cfg.Inline = true
	warnConntrackLax(d.log)
	return nil
}

// startProxy starts the control proxy for NAT, and its routes.
func (d *daemon) startProxy() error {
	proxy, routes, err := d.rv.nf.startProxy(d.log)
	if err != nil {
		return fmt.Errorf("starting the control proxy for NAT (--nat off runs without it): %w", err)
	}
	d.closers.pushCloser(routes)
	d.closers.pushCloser(proxy)
	d.sources = append(d.sources, proxySource{controlProxy: proxy, loop: &d.loop})
	d.cfg.ProxyConns = proxy
	return nil
}

// startTracker makes the tracker. The report hooks itself into the
// configuration, so it starts first: the tracker keeps a copy.
func (d *daemon) startTracker(ctx context.Context) error {
	d.cfg.ReportWindow = 2 * time.Second
	d.cfg.ConfirmAdmitted = true
	warnRuleset(d.fw, d.rv.m.acceptLine(), d.log)
	if d.natOn {
		// NAT keeps clear of the public ports this host listens on or
		// the admin's rules forward.
		pp := &publicPorts{fw: d.fw, sockets: d.sockets, log: d.log}
		pp.warnOverlap(d.rv.nf.ports)
		d.cfg.PublicPortInUse = pp.inUse
	}
	if *d.rv.reportDir != "" {
		finish, err := startReport(ctx, *d.rv.reportDir, &d.cfg, d.log)
		if err != nil {
			return err
		}
		d.closers.push(finish)
	}
	d.met = newMetrics(func() conntrack.Stats { return d.tr.Snapshot() })
	d.tr = conntrack.NewTracker(d.cfg, timedBackend{d.fw, d.met.commitTime})
	return nil
}

// startSideServices starts what answers beside the loop: metrics, and
// the calls that the status socket and reloads hand the loop.
func (d *daemon) startSideServices(ctx context.Context) error {
	if *d.rv.metricsListen != "" {
		if err := d.met.serve(ctx, *d.rv.metricsListen, d.log); err != nil {
			return err
		}
	}
	calls, err := capture.NewCalls()
	if err != nil {
		return fmt.Errorf("the queue of calls to the loop (status, reload): %w", err)
	}
	d.closers.pushCloser(calls)
	d.calls = calls
	d.sources = append(d.sources, calls)
	// The loop's first call, before any status request can be queued:
	// status answers only once ftpgate has said it is ready.
	calls.Do(d.ready)
	if *d.rv.statusSocket != "" {
		status := func() any { return daemonStatus{Version: version, Status: d.tr.Status()} }
		ss, err := startStatus(*d.rv.statusSocket, calls, status, d.log)
		if err != nil {
			return err
		}
		d.closers.pushCloser(ss)
	}
	return nil
}

// ready runs in the loop's first round, once the table takes traffic
// and the loop reads every socket, what arrived during the start first.
// It says so in the log and to the service manager (Type=notify).
func (d *daemon) ready() {
	d.logRunning()
	if err := sdNotify("READY=1\nSTATUS=watching FTP control traffic"); err != nil {
		d.log.Warn("could not tell the service manager that ftpgate is ready", "error", err)
	}
}

func (d *daemon) logRunning() {
	rv := d.rv
	d.log.Info("ftpgate running", "version", version, "capture", d.captureDesc,
		"interfaces", ifaceList(d.ifaces), "control_ports", rv.tf.controlPorts.String(),
		"table", "inet "+*rv.table, "mark", rv.m.String(),
		"ruleset_line", rv.m.acceptLine(),
		"nat", natDesc(d.natOn, rv.nf))
}

func (d *daemon) reloader() *reloader {
	return &reloader{rv: d.rv, args: d.args, servers: d.servers, ranges: d.serverRanges,
		to: reloadTargets{tr: d.tr, fw: d.fw, passive: d.passive}, calls: d.calls, log: d.log}
}

// run runs the loop until SIGINT or SIGTERM, then closes every session,
// so that their pinholes leave the kernel before the table does.
func (d *daemon) run(ctx context.Context) error {
	d.loop.t, d.loop.log, d.loop.heldWait = d.tr, d.logged, d.met.heldWait
	err := capture.Run(ctx, &d.loop, d.sources...)
	if nerr := sdNotify("STOPPING=1"); nerr != nil {
		d.log.Warn("could not tell the service manager that ftpgate is stopping", "error", nerr)
	}
	d.tr.CloseAll("daemon stopping")
	if cerr := d.tr.Commit(); err == nil {
		err = cerr
	}
	d.logStopped()
	return err
}

func (d *daemon) logStopped() {
	st := d.tr.Stats()
	datagrams, records := d.logged.Counts()
	d.log.Info("ftpgate stopped", "sessions", st.SessionsStarted, "channels_opened", st.ChannelsOpened,
		"channels_refused", st.ChannelsRefused, "lines", st.Lines, "lines_too_long", st.LinesTooLong,
		"gap_bytes", st.GapBytes, "sessions_refused", st.SessionsRefused, "backend_errors", st.BackendErrors,
		"syns_held", st.SYNsHeld, "syns_admitted", st.SYNsAdmitted, "adds_cancelled", st.AddsCancelled, "copy_overflows", st.CopiesLost,
		"log_datagrams", datagrams, "log_records", records,
		"data_admitted", st.DataAdmitted, "admitted_dropped", st.AdmittedDropped,
		"sessions_proxied", st.SessionsProxied, "nat_rewrites", st.NATRewrites, "nat_mappings", st.NATMappings)
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

func natDesc(on bool, nf natFlags) string {
	if !on {
		return "off"
	}
	if nf.packet() {
		return fmt.Sprintf("on (translated control connections in the packet path on queue %d, rewritten and shifted in their segments; public ports %s)", nf.queue, nf.ports.String())
	}
	return fmt.Sprintf("on (translated control connections through the control proxy on port %d; public ports %s)", nf.proxyPort, nf.ports.String())
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
connection your own NAT rules translate (masquerade, dnat) goes on at once;
after all of your rules accepted its SYN, ftpgate's detect chain adds it to
ftp_control_translated_v4/v6 (table inet TABLE_nat), and from then on every
segment of it is queued to ftpgate (--nat-queue), both ways. ftpgate rewrites
announcements whose address differs on the far side (PORT/EPRT of a
masqueraded client, 227/229 of a server behind a port forward) inside the
segment, to the public address and a port from --nat-ports (never the port
announced, one this host listens on, or one your rules forward), has the
sequence numbers of every later segment shifted, and maps each data
connection in the kernel (DNAT, and SNAT where needed): a 227/229's before
the client sees it, a PORT/EPRT's once the server accepted it. Who shifts
(--nat-shift): ftpgate, with every segment queued; or, with --nat-shift
kernel on a kernel with the NFQUEUE glue and userspace helpers (most
distribution kernels), the kernel, for IPv4: new control connections get a
disabled helper stub before NAT ("ftpgate", which gives a translated one
the seqadj extension), only their segments with data, SYN, FIN or RST are
queued, and the shift lives in the connection's conntrack entry. A restart
keeps translated sessions: the kernel keeps its shifts; connections
ftpgate shifts wait in the kernel while no ftpgate runs; what ftpgate needs
is kept in --nat-state. --nat-path proxy
runs them through ftpgate's control proxy instead (the first SYN dropped and
the client's retry taken over: a second's delay at every login; add the
ruleset line to your input chain too; a restart ends proxied sessions).

At start-up ftpgate binds and configures its sockets first, then makes its
table and its rules; what they send meanwhile waits for it (held SYNs in
the queue, copies in the NFLOG socket), and control connections that were
already open are picked up mid-stream. Once it reads all of that it logs
"ftpgate running", tells the service manager it is ready (READY=1 on
$NOTIFY_SOCKET: systemd's Type=notify), and answers ftpgate status. Wait
for that, not for the table, which shows in nft list a moment earlier.

Logs: one line per session start and end, and per channel opened, refused
or closed. In a channel's line, orig_h is the host that will open the data
connection (the client in passive mode, the server in active mode) and
resp_h:resp_p where it will connect: "orig_h may connect to resp_h:resp_p,
once". --report DIR draws the same as a page for people.

`
