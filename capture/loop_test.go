package capture_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftpgate/ftpgate/capture"
)

// These tests run capture.Run on fake sources: no sockets, no root. A
// source is either always ready (a file's Fd, -1) or an eventfd the
// test makes readable, so that the loop's own poll and wake-up are the
// real ones. The poll also ends early when the runtime's preemption
// signal interrupts it (EINTR), and the loop then runs a round in which
// nothing is ready: the tests allow for such rounds.

// journal is what the loop did, in order. Run writes it on its own
// goroutine while some tests look at it.
type journal struct {
	mu     sync.Mutex
	events []string
}

func (j *journal) add(format string, args ...any) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.events = append(j.events, fmt.Sprintf(format, args...))
}

func (j *journal) all() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.events)
}

// fakeSource delivers, at each Read, the next of its rounds, and after
// the last of them end (nil: stays ready with nothing to deliver).
type fakeSource struct {
	name   string
	j      *journal
	fd     int // -1, or an eventfd that Read drains
	rounds [][]string
	end    error
	reads  int
}

func (s *fakeSource) Fd() int      { return s.fd }
func (s *fakeSource) Close() error { return nil }

func (s *fakeSource) Read(fn func(*capture.Packet)) error {
	s.j.add("read %s", s.name)
	if s.fd >= 0 {
		var b [8]byte
		if n, _ := unix.Read(s.fd, b[:]); n > 0 {
			s.j.add("ready %s", s.name)
		}
	}
	s.reads++
	if s.reads > len(s.rounds) {
		return s.end
	}
	for _, data := range s.rounds[s.reads-1] {
		fn(&capture.Packet{Data: []byte(data), Kind: capture.Copy})
	}
	return nil
}

// fakeHandler journals every packet and Tick; for a held packet it sets
// the verdict named in verdicts. tick, if set, says when to be called
// next.
type fakeHandler struct {
	j        *journal
	verdicts map[string]capture.Verdict
	tick     func(now time.Time) time.Time
}

func (h *fakeHandler) Handle(p *capture.Packet) {
	h.j.add("handle %s", p.Data)
	if p.Kind == capture.Held {
		p.Verdict = h.verdicts[string(p.Data)]
	}
}

func (h *fakeHandler) Tick(now time.Time) time.Time {
	h.j.add("tick")
	if h.tick != nil {
		return h.tick(now)
	}
	return time.Time{}
}

// A stop wakes the loop by writing to its eventfd from a goroutine of
// its own, and the loop may see the stop and return before that write.
// The eventfd must outlive the write, or the write lands in whatever
// descriptor is opened next with its number (in these tests the next
// test's eventfd, which then reads as ready forever).
func TestRunStopWritesNoClosedDescriptor(t *testing.T) {
	for i := range 200 {
		ctx, cancel := context.WithCancel(context.Background())
		h := &fakeHandler{j: &journal{}, tick: func(time.Time) time.Time { cancel(); return time.Time{} }}
		if err := capture.Run(ctx, h, &fakeSource{name: "file", j: &journal{}, fd: -1}); err != nil {
			t.Fatal(err)
		}
		fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Microsecond)
		var b [8]byte
		n, _ := unix.Read(fd, b[:])
		unix.Close(fd)
		if n > 0 {
			t.Fatalf("run %d: a descriptor opened after Run returned was written to", i)
		}
	}
}
