package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ftpgate/ftpgate/capture"
	"github.com/ftpgate/ftpgate/nat"
	"github.com/ftpgate/ftpgate/rules"
)

// packetSource is the NAT packet path's queue as a source of the loop:
// each segment goes through the path as it is read, and goes on, as it
// came, rewritten or shifted, at Release, after Tick has committed what
// its lines opened.
type packetSource struct {
	*capture.QueueSource
	path *nat.PacketPath
}

func (s packetSource) Read(func(*capture.Packet)) error {
	return s.QueueSource.Read(func(p *capture.Packet) {
		// Each replaced packet has its own buffer: it must stay as it is
		// until Release, while later ones are built.
		out, v := s.path.Segment(nil, p.Data, p.Hook == capture.HookPrerouting, p.Time)
		switch v {
		case nat.PassReplaced:
			p.Replace = out
		case nat.PassKernelShifts:
			p.Replace, p.KernelShifts = out, true
		case nat.DropSegment:
			p.Verdict = capture.Drop
		}
	})
}

// packetUser is the tracker as the packet path's user: a connection it
// sees is looked up in conntrack for its translation, and its bytes go
// to the tracker's session of it.
type packetUser struct {
	loop *daemonLoop
	ct   *nat.Conntrack
	log  *slog.Logger
}

func (u *packetUser) Opened(id uint64, client, serverSeen netip.AddrPort, pickedUp bool) (bool, bool) {
	tr, err := u.ct.Translation(client, serverSeen)
	if err != nil {
		u.log.Warn("NAT packet path: translated control connection not followed: its announcements go on untranslated",
			"client", client.String(), "server", serverSeen.String(), "error", err)
		return false, false
	}
	u.loop.t.OpenTranslated(id, tr, pickedUp, time.Now())
	return true, tr.HelperAttached
}

func (u *packetUser) Bytes(id uint64, fromServer bool, seq uint32, data []byte, ack uint32) ([]byte, bool) {
	u.loop.proxiedLine = true
	return u.loop.t.TranslatedBytes(id, fromServer, seq, data, ack, time.Now())
}

func (u *packetUser) Closed(id uint64, reason string) {
	u.loop.t.CloseProxied(id, reason, time.Now())
}

// packetConns is the packet path as the tracker's ProxyConns: a session
// the tracker ends has its connection cut.
type packetConns struct{ path *nat.PacketPath }

func (c packetConns) CloseConn(id uint64) { c.path.Forget(id) }

// startPacketPath binds the NAT packet path's queue (without fail-open:
// a segment of a shifted connection must never go on unshifted) and
// opens ctnetlink for the translations.
func (d *daemon) startPacketPath() error {
	nf := &d.rv.nf
	if nf.queue == *d.rv.queueNum {
		return fmt.Errorf("--nat-queue %d: must differ from --queue", nf.queue)
	}
	if !nat.IPv6Enabled() {
		d.log.Warn(ipv6OffWarning)
	}
	ct, err := nat.OpenConntrack(0)
	if err != nil {
		return fmt.Errorf("starting the NAT packet path (--nat off runs without it): %w", err)
	}
	d.closers.pushCloser(ct)
	q, err := capture.OpenRewriteQueue(uint16(nf.queue), 8192, 0)
	if err != nil {
		return fmt.Errorf("starting the NAT packet path (--nat off runs without it): %w", err)
	}
	d.closers.pushCloser(q)
	if nf.kernelShifts, err = nf.kernelShift(q, *d.rv.table, d.log); err != nil {
		return err
	}
	d.kernel.natKernelShifts = nf.kernelShifts
	user := &packetUser{loop: &d.loop, ct: ct, log: d.log}
	path := nat.NewPacketPath(user, nat.PacketPathConfig{MaxConns: nf.maxProxied, MaxPerSource: nf.perClientShare(), Idle: d.cfg.IdleTimeout + time.Minute, KernelShifts: nf.kernelShifts},
		func(client, serverSeen netip.AddrPort, shifted bool) { d.forgetTranslated(client, serverSeen, shifted) })
	path.OnShift = d.shiftTranslated
	file, err := nf.stateFile(*d.rv.table)
	if err != nil {
		return err
	}
	st, err := nat.ReadState(file)
	if err == nil {
		var n int
		n, err = path.Restore(st, time.Now())
		if n > 0 {
			d.log.Info("NAT packet path: translated sessions carried over from the last run", "sessions", n, "state", file)
		}
	}
	if err != nil {
		// Their streams cannot be carried on: those sessions break, as
		// they would have without the file.
		d.log.Warn("NAT packet path: the last run's state cannot be read; its translated sessions are lost", "state", file, "error", err)
	}
	d.loop.packets = path
	sf, err := nat.OpenStateFile(file)
	if err != nil {
		return err
	}
	d.closers.pushCloser(sf)
	d.loop.saveState = func(now time.Time, clean bool) {
		if err := sf.Write(path.Snapshot(now, clean)); err != nil {
			d.log.Error("NAT packet path: writing the state a restart needs", "state", file, "error", err)
		}
	}
	d.sources = append(d.sources, packetSource{QueueSource: q, path: path})
	d.cfg.ProxyConns = packetConns{path}
	warnPortsOverlap(nf.ports, d.log)
	return nil
}

// kernelShift decides --nat-shift: "ftpgate" (the default) never asks;
// with "auto" the kernel shifts where the queue carries conntrack (the
// glue) and the helper stub registers (see nat.RegisterHelperStub), and
// no other program's queue rule is in the ruleset (an inline IPS: see
// rules.ForeignQueues); "kernel" insists on the first two.
func (f *natFlags) kernelShift(q *capture.QueueSource, table string, log *slog.Logger) (bool, error) {
	if f.shift == "ftpgate" {
		return false, nil
	}
	cannot := func(err error) (bool, error) {
		if f.shift == "kernel" {
			return false, fmt.Errorf("--nat-shift kernel: this kernel cannot shift sequence numbers for ftpgate: %w (--nat-shift ftpgate or auto)", err)
		}
		return false, nil
	}
	if q.ConntrackErr != nil {
		return cannot(q.ConntrackErr)
	}
	if !q.Conntrack {
		return cannot(errors.New("NFQUEUE carries no conntrack (CONFIG_NETFILTER_NETLINK_GLUE_CT off)"))
	}
	// Read before the stub is registered: the stub is the kernel's, for
	// every namespace, and is not made where it would not be used.
	others, err := rules.ForeignQueues(0, table)
	switch {
	case err != nil:
		return false, fmt.Errorf("reading the ruleset for other programs' queues: %w", err)
	case len(others) > 0 && f.shift == "kernel":
		log.Warn("NAT packet path: --nat-shift kernel with other programs' queue rules: a new control connection's SYN they queue before source NAT loses its NAT (the kernel confirms it as it comes back, for the helper stub)", "chains", others)
	case len(others) > 0:
		log.Warn("NAT packet path: ftpgate shifts sequence numbers itself: other programs' queue rules would cost new control connections their source NAT where the kernel shifts (--nat-shift kernel overrides)", "chains", others)
		return false, nil
	}
	if err := nat.RegisterHelperStub(0); err != nil {
		return cannot(err)
	}
	return true, nil
}

// stopPacketPath is the packet path's part of a stop: connections that
// can go on without ftpgate are given up; those it shifts wait in the
// kernel (their table stays) for the next ftpgate, which finds them in
// the state file.
func (d *daemon) stopPacketPath() {
	d.loop.saveState(time.Now(), true)
	kept := d.loop.packets.Stop()
	if err := d.fw.StopTranslating(kept > 0); err != nil {
		d.log.Error("stopping the NAT packet path", "error", err)
	}
	if kept > 0 {
		d.log.Info("NAT packet path: translated sessions wait for the next ftpgate (their segments are held back until then)",
			"sessions", kept, "table", "inet "+*d.rv.table+rules.NATTableSuffix)
	}
}

// readdTranslated queues again the connections carried over from the
// last run that it never shifted: their elements went with its table.
func (d *daemon) readdTranslated() {
	for _, r := range d.loop.packets.RestoredUnshifted() {
		add := d.fw.AddTranslated
		if d.rv.nf.kernelShifts && !r.Kernel && r.Client.Addr().Is4() {
			// ftpgate shifts it (the last run did not leave it to the
			// kernel): its segments must all be queued, as those of the
			// connections ftpgate has shifted are.
			add = d.fw.KeepTranslated
		}
		if err := add(r.Client, r.ServerSeen); err != nil {
			d.log.Warn("NAT packet path: a session carried over could not be followed again; its announcements go on untranslated",
				"client", r.Client.String(), "server", r.ServerSeen.String(), "error", err)
		}
	}
}

// shiftTranslated moves a connection ftpgate has just shifted into the
// kept table, before the segment goes on. A failure is logged: the
// session works while this ftpgate runs, but a restart would cut it.
func (d *daemon) shiftTranslated(client, serverSeen netip.AddrPort) {
	if d.fw == nil {
		return
	}
	if err := d.fw.ShiftTranslated(client, serverSeen); err != nil {
		d.log.Error("NAT packet path: a shifted session could not be kept for a restart", "client", client.String(), "server", serverSeen.String(), "error", err)
	}
}

// stateFile is --nat-state, or the default for table in this network
// namespace.
func (f *natFlags) stateFile(table string) (string, error) {
	if f.state != "" {
		return f.state, nil
	}
	ns, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		return "", fmt.Errorf("--nat-state: naming the default state file: %w", err)
	}
	// "net:[4026531840]": the namespace's inode, stable while it lives.
	ns = strings.Trim(strings.TrimPrefix(ns, "net:"), "[]")
	return filepath.Join("/run/ftpgate", table+"-"+ns+".nat.json"), nil
}

// forgetTranslated stops the queueing of a connection the packet path
// is done with. A failure is logged: the element times out by itself.
func (d *daemon) forgetTranslated(client, serverSeen netip.AddrPort, shifted bool) {
	if d.fw == nil {
		return
	}
	if err := d.fw.ForgetTranslated(client, serverSeen, shifted); err != nil {
		d.log.Warn("NAT packet path: could not forget a translated control connection; its element expires by itself",
			"client", client.String(), "server", serverSeen.String(), "error", err)
	}
}

var _ nat.PacketUser = (*packetUser)(nil)
