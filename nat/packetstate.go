package nat

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// A restart of ftpgate must not cut translated sessions whose sequence
// numbers it shifts: the two ends no longer agree on the stream without
// it. What the packet path knows of such a connection (where each side's
// stream is, the corrections, the segments rewritten) is written to a
// state file before the segments that changed it go on, and a new
// ftpgate reads it back. The kernel keeps the rest: the element that
// queues the connection's segments lives in a table of its own that
// outlives the process (rules.Config.NAT), and while no ftpgate listens
// the segments are dropped, not passed unshifted, so their senders send
// them again once it is back.

// PacketState is what a state file holds.
type PacketState struct {
	Version int       `json:"version"`
	Saved   time.Time `json:"saved"`
	// Clean: written as ftpgate stopped, when every segment read had
	// gone on; where each stream is then (ConnState.Next) is exact.
	// Otherwise (written at a rewrite, before kill -9) the streams have
	// moved on since, and are picked up where they are.
	Clean bool        `json:"clean"`
	Conns []ConnState `json:"conns"`
}

// ConnState is one connection in a state file.
type ConnState struct {
	Client     netip.AddrPort    `json:"client"`
	ServerSeen netip.AddrPort    `json:"server_seen"`
	Next       [2]uint32         `json:"next"`
	Known      [2]bool           `json:"known"`
	Fin        [2]bool           `json:"fin,omitempty"`
	Corr       [2][]CorrState    `json:"corrections"`
	Rewrites   [2][]RewriteState `json:"rewrites,omitempty"`
	// Kernel: the kernel shifts it (PacketConn); Corr follows what it
	// does.
	Kernel bool `json:"kernel,omitempty"`
}

// CorrState is one correction of a SeqAdjust.
type CorrState struct {
	Pos    uint32 `json:"pos"`
	Before int32  `json:"before"`
	After  int32  `json:"after"`
}

// RewriteState is one rewritten segment.
type RewriteState struct {
	Seq  uint32 `json:"seq"`
	Orig []byte `json:"orig"`
	Out  []byte `json:"out"`
}

const packetStateVersion = 1

// SaveDue says whether a state file must be written now: after a
// rewrite at once; after connections came or went at most once a
// second (a restart within that second forgets or re-adds them, which
// costs their announcements a translation, not their streams: only a
// rewrite shifts one). A state file costs its connections' size to
// write, so it is not written for each.
func (p *PacketPath) SaveDue(now time.Time) bool {
	return p.dirty || (p.stale && now.Sub(p.saved) >= time.Second)
}

// Snapshot is the state of every connection followed: the shifted ones
// need it to go on at all, the others to be followed again (their
// elements are in the owned table, which goes with the process; the
// next ftpgate adds them back: RestoredUnshifted). clean: every segment
// read has gone on (ftpgate stops).
func (p *PacketPath) Snapshot(now time.Time, clean bool) PacketState {
	p.dirty, p.stale, p.saved = false, false, now
	st := PacketState{Version: packetStateVersion, Saved: now, Clean: clean}
	for k, c := range p.conns {
		if !c.established || c.cut || c.closed {
			continue
		}
		cs := ConnState{Client: k.client, ServerSeen: k.serverSeen, Next: c.next, Known: c.known, Fin: c.fin, Kernel: c.shift.KernelShifts()}
		for d := range 2 {
			for _, x := range c.shift.adj[d].corr {
				cs.Corr[d] = append(cs.Corr[d], CorrState{Pos: x.pos, Before: x.before, After: x.after})
			}
			for _, r := range c.rewrites[d] {
				cs.Rewrites[d] = append(cs.Rewrites[d], RewriteState{Seq: r.seq, Orig: r.orig, Out: r.out})
			}
		}
		st.Conns = append(st.Conns, cs)
	}
	return st
}

// Restore takes connections back from a state file, before any segment
// is read: each is followed again from its next segment, its session
// picked up by the user (Opened) then; it counts against its client's
// share from then on.
func (p *PacketPath) Restore(st PacketState, now time.Time) (int, error) {
	if st.Version != packetStateVersion {
		return 0, fmt.Errorf("state file version %d, want %d", st.Version, packetStateVersion)
	}
	n := 0
	for _, cs := range st.Conns {
		if !cs.Client.IsValid() || !cs.ServerSeen.IsValid() || len(p.conns) >= p.cfg.MaxConns {
			continue
		}
		if cs.Kernel && !p.cfg.KernelShifts {
			// The kernel shifts it, and keeps doing so; but here its
			// segments would be queued before conntrack, where a verdict
			// cannot tell the kernel of a new rewrite: it goes on
			// unfollowed, its announcements untranslated.
			continue
		}
		c := &pathConn{next: cs.Next, known: cs.Known, fin: cs.Fin, pickedUp: true, last: now, created: now}
		c.shift.kernel = cs.Kernel
		if !st.Clean {
			c.known = [2]bool{}
		}
		for d := range 2 {
			if len(cs.Corr[d]) > MaxCorrections || len(cs.Rewrites[d]) > maxRewriteRecords {
				return n, fmt.Errorf("state of %s -> %s: more corrections or rewrites than kept", cs.Client, cs.ServerSeen)
			}
			for _, x := range cs.Corr[d] {
				c.shift.adj[d].corr = append(c.shift.adj[d].corr, correction{pos: x.Pos, before: x.Before, after: x.After})
			}
			for _, r := range cs.Rewrites[d] {
				c.rewrites[d] = append(c.rewrites[d], rewriteRecord{seq: r.Seq, orig: r.Orig, out: r.Out, restored: true})
			}
		}
		p.nextID++
		c.id = p.nextID
		c.source = sourceOf(cs.Client)
		c.key = connKey{client: cs.Client, serverSeen: cs.ServerSeen}
		p.conns[c.key] = c
		n++
	}
	return n, nil
}

// RestoredUnshifted are the connections restored that ftpgate never
// shifted: their elements went with the last ftpgate's table, and must
// be added again for their segments to be queued. Kernel says the kernel
// shifts the connection (its segments are queued as such).
func (p *PacketPath) RestoredUnshifted() []RestoredConn {
	var out []RestoredConn
	for k, c := range p.conns {
		if c.pickedUp && !c.established && !c.shift.Shifted() {
			out = append(out, RestoredConn{Client: k.client, ServerSeen: k.serverSeen, Kernel: c.shift.KernelShifts()})
		}
	}
	return out
}

// RestoredConn is a connection carried over from the last run.
type RestoredConn struct {
	Client, ServerSeen netip.AddrPort
	Kernel             bool
}

// StateFile is a state file kept open while ftpgate runs, written in
// place after every rewrite: one write of the whole state at the start
// of the file, then the file cut to its length. A process that dies
// (kill -9) dies between system calls, never inside the write, so the
// file holds the last state, or the last state followed by the tail of
// a longer earlier one, which ReadState ignores. (Rename and reopen
// each time cost a third of ftpgate's CPU in make bench's NAT rows.)
type StateFile struct {
	f   *os.File
	buf []byte
}

// OpenStateFile opens (creating) the state file at path.
func OpenStateFile(path string) (*StateFile, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("opening the NAT state file: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening the NAT state file: %w", err)
	}
	return &StateFile{f: f}, nil
}

// Write writes st in place.
func (w *StateFile) Write(st PacketState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	// A newline ends the state: what follows it is an older one's tail.
	w.buf = append(append(w.buf[:0], b...), '\n')
	if _, err := w.f.WriteAt(w.buf, 0); err != nil {
		return fmt.Errorf("writing the NAT state: %w", err)
	}
	if err := w.f.Truncate(int64(len(w.buf))); err != nil {
		return fmt.Errorf("writing the NAT state: %w", err)
	}
	return nil
}

// Close closes the file.
func (w *StateFile) Close() error { return w.f.Close() }

// ReadState reads a state file; a missing one is an empty state.
func ReadState(path string) (PacketState, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return PacketState{Version: packetStateVersion}, nil
	}
	if err != nil {
		return PacketState{}, fmt.Errorf("reading the NAT state: %w", err)
	}
	if len(b) == 0 {
		return PacketState{Version: packetStateVersion}, nil
	}
	// The first value: a tail after it is an older state's (StateFile).
	var st PacketState
	if err := json.NewDecoder(bytes.NewReader(b)).Decode(&st); err != nil {
		return PacketState{}, fmt.Errorf("reading the NAT state %s: %w", path, err)
	}
	return st, nil
}
