package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"reflect"
	"slices"
	"strings"
	"syscall"

	"github.com/ftpgate/ftpgate/capture"
	"github.com/ftpgate/ftpgate/conntrack"
	"github.com/ftpgate/ftpgate/rules"
)

// reloadTargets are what a reload changes: the tracker, and where the
// control ports are: the kernel's rules and the passive capture filters.
type reloadTargets struct {
	tr      *conntrack.Tracker
	fw      *rules.Nftables
	passive []*capture.AFPacketSource
}

// reloader applies the configuration again on each SIGHUP, from a
// goroutine of its own; the tracker and the kernel's rules belong to the
// loop's goroutine, so it changes them through a call run there.
type reloader struct {
	rv      *runVars // the running flags: the file's name, the logger's level
	args    []string
	servers []conntrack.ServerPolicy // the [[server]] tables last applied
	ranges  []conntrack.FTPSRange    // and their FTPS ranges
	running map[string]string        // every flag's value last applied
	// ports are the control ports in the kernel. The loop's goroutine
	// writes them; the reloader reads them after the call's answer.
	ports []uint16
	to    reloadTargets
	calls *capture.Calls
	log   *slog.Logger
}

// reloadOnHUP reads the command line and the configuration file again on
// each SIGHUP and applies what can change in a running daemon (liveKeys),
// removals included: what the new configuration no longer gives closes
// at once. A change of anything else is logged as waiting for the next
// start. A file that does not load leaves the running configuration as
// it is.
func reloadOnHUP(ctx context.Context, r *reloader) (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	r.running = flagValues(r.rv.fs)
	r.ports = slices.Clone(r.to.tr.ControlPorts())
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
			}
			if !r.reload(ctx) {
				return
			}
		}
	}()
	return func() { signal.Stop(hup) }
}

// reload applies the configuration as it is now. It returns false when
// the daemon stopped before the loop could take the change.
func (r *reloader) reload(ctx context.Context) bool {
	next, err := r.load()
	if err != nil {
		r.log.Error("configuration not reloaded: the running one stays", "file", *r.rv.config, "error", err)
		return true
	}
	live := r.takeLiveChanges(next)
	res, ok := r.apply(ctx, next)
	if !ok {
		return false
	}
	if res.err != nil {
		pl := portList(r.ports)
		r.log.Error("the control ports were not changed: the running ones stay", "running", pl.String(), "error", res.err)
	}
	r.rv.tf.level.Set(next.level)
	r.log.Info("configuration reloaded", "file", *r.rv.config, "changed", strings.Join(live, " "),
		"sessions_ended", res.done.SessionsEnded, "pinholes_closed", res.done.PinholesClosed, "scoped_ranges_closed", res.done.RangesClosed)
	return true
}

// reloadedConfig is the command line and the file, read again.
type reloadedConfig struct {
	vars    *runVars
	cfg     conntrack.Config
	servers []conntrack.ServerPolicy
	ranges  []conntrack.FTPSRange // the [[server]] tables'
	level   slog.Level
}

func (r *reloader) load() (reloadedConfig, error) {
	next := reloadedConfig{vars: newRunVars()}
	var err error
	if next.servers, next.ranges, err = next.vars.load(r.args, func(io.Writer) {}, io.Discard); err != nil {
		return reloadedConfig{}, err
	}
	if next.cfg, err = next.vars.tf.config(r.log); err != nil {
		return reloadedConfig{}, err
	}
	if err := next.vars.ff.apply(&next.cfg); err != nil {
		return reloadedConfig{}, err
	}
	if err := next.level.UnmarshalText([]byte(next.vars.tf.logLevel)); err != nil {
		return reloadedConfig{}, err
	}
	next.cfg.FTPSRanges = append(next.cfg.FTPSRanges, next.ranges...)
	return next, nil
}

// takeLiveChanges lists what next changes that a running daemon takes,
// and counts those as running from now; it warns of every other change,
// which waits for the next start.
func (r *reloader) takeLiveChanges(next reloadedConfig) (live []string) {
	values := flagValues(next.vars.fs)
	for _, name := range slices.Sorted(maps.Keys(values)) {
		if r.running[name] == values[name] {
			continue
		}
		if !liveKeys[name] {
			r.log.Warn("changed in the configuration; takes effect at the next start", "key", name,
				"running", r.running[name], "configured", values[name])
			continue
		}
		live = append(live, name+"="+values[name])
		r.running[name] = values[name]
	}
	if !reflect.DeepEqual(next.servers, r.servers) || !reflect.DeepEqual(next.ranges, r.ranges) {
		live = append(live, fmt.Sprintf("server (%d entries)", len(next.servers)))
		r.servers, r.ranges = next.servers, next.ranges
	}
	return live
}

// reloadResult is what the loop's goroutine did with a reload.
type reloadResult struct {
	done conntrack.Reconfigured
	err  error // changing the control ports; the rest is applied regardless
}

// apply hands next to the loop's goroutine and waits for its answer; ok
// is false when the daemon stopped first.
func (r *reloader) apply(ctx context.Context, next reloadedConfig) (res reloadResult, ok bool) {
	cfg := next.cfg
	re := conntrack.Reconfigurable{MinDataPort: cfg.MinDataPort, PinholeTimeout: cfg.PinholeTimeout,
		IdleTimeout: cfg.IdleTimeout, HandshakeTimeout: cfg.HandshakeTimeout,
		MaxPinholesPerSession: cfg.MaxPinholesPerSession, Servers: next.servers,
		FTPSRanges: cfg.FTPSRanges, ActiveRanges: cfg.ActiveRanges}
	answer := make(chan reloadResult, 1)
	r.calls.Do(func() {
		var res reloadResult
		if !slices.Equal(cfg.ControlPorts, r.ports) {
			res.err = setControlPorts(r.to, cfg.ControlPorts)
			if res.err == nil {
				r.ports = slices.Clone(cfg.ControlPorts)
				re.ControlPorts, re.ImplicitPorts = cfg.ControlPorts, cfg.ImplicitPorts
			}
		}
		res.done = r.to.tr.Reconfigure(re)
		answer <- res
	})
	select {
	case res = <-answer:
		return res, true
	case <-ctx.Done():
		return reloadResult{}, false
	}
}

// setControlPorts changes the control ports in the kernel: the inline
// rules, or the passive capture filters.
func setControlPorts(to reloadTargets, ports []uint16) error {
	if err := to.fw.SetControlPorts(ports); err != nil {
		return err
	}
	for _, src := range to.passive {
		if err := src.SetPorts(ports); err != nil {
			return err
		}
	}
	return nil
}
