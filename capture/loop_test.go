package capture_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
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

func (j *journal) count(event string) int {
	n := 0
	for _, e := range j.all() {
		if e == event {
			n++
		}
	}
	return n
}

// index is where event first is, or -1.
func (j *journal) index(event string) int { return slices.Index(j.all(), event) }

// fakeSource delivers, at each Read, the next of its rounds, and after
// the last of them end (nil: stays ready with nothing to deliver).
type fakeSource struct {
	name   string
	j      *journal
	fd     int // -1, or an eventfd (see readyFd) that Read drains
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

// fakeHolder is a fakeSource whose packets are Held until Release.
type fakeHolder struct {
	fakeSource
	last       []*capture.Packet
	releaseErr error
}

func (s *fakeHolder) Read(fn func(*capture.Packet)) error {
	s.last = s.last[:0]
	return s.fakeSource.Read(func(p *capture.Packet) {
		p.Kind = capture.Held
		s.last = append(s.last, p)
		fn(p)
	})
}

func (s *fakeHolder) Release() error {
	var verdicts []string
	for _, p := range s.last {
		verdicts = append(verdicts, fmt.Sprintf("%s=%s", p.Data, verdictNames[p.Verdict]))
	}
	s.j.add("release %s %s", s.name, strings.Join(verdicts, ","))
	return s.releaseErr
}

var verdictNames = map[capture.Verdict]string{capture.Accept: "accept", capture.Admit: "admit", capture.Retry: "retry"}

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

// readyFd is an eventfd for a fake source; ready makes it readable.
func readyFd(t *testing.T) int {
	t.Helper()
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func ready(t *testing.T, fd int) {
	t.Helper()
	if _, err := unix.Write(fd, []byte{1, 0, 0, 0, 0, 0, 0, 0}); err != nil {
		t.Fatal(err)
	}
}

// runAsync runs the loop on its own goroutine; its result comes on the
// channel.
func runAsync(ctx context.Context, h capture.Handler, sources ...capture.Source) <-chan error {
	done := make(chan error, 1)
	go func() { done <- capture.Run(ctx, h, sources...) }()
	return done
}

// run runs the loop to its end, failing the test if it hangs.
func run(t *testing.T, ctx context.Context, h capture.Handler, sources ...capture.Source) error {
	t.Helper()
	return result(t, runAsync(ctx, h, sources...), 2*time.Second)
}

// result waits for the loop's end, failing the test if it does not come
// within d: a loop that no longer ends would otherwise hang the test.
func result(t *testing.T, done <-chan error, d time.Duration) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		t.Fatalf("Run has not returned after %v", d)
		return nil
	}
}

// inOrder fails unless each event of want is in the journal after the
// one before it.
func inOrder(t *testing.T, j *journal, want ...string) {
	t.Helper()
	events := j.all()
	at := 0
	for _, w := range want {
		i := slices.Index(events[at:], w)
		if i < 0 {
			t.Fatalf("want %q in order in %q", want, events)
		}
		at += i + 1
	}
}

// The queue is read before the log: a copy the kernel logged before it
// queued a held packet is then in the log when the log is read, so it is
// handled in the same round, before the held packet. Read the other way
// round, a copy logged in between would come a round late.
func TestRunReadsHoldersBeforeOtherSources(t *testing.T) {
	j := &journal{}
	log := &fakeSource{name: "log", j: j, fd: -1, rounds: [][]string{{"copy"}}, end: io.EOF}
	queue := &fakeHolder{fakeSource: fakeSource{name: "queue", j: j, fd: -1, rounds: [][]string{{"syn"}}}}
	if err := run(t, context.Background(), &fakeHandler{j: j}, log, queue); err != nil {
		t.Fatal(err)
	}
	if q, l := j.index("read queue"), j.index("read log"); q < 0 || l < 0 || q > l {
		t.Errorf("the log read before the queue: %q", j.all())
	}
}

// A held packet is decided on only after every copy of the round: its
// verdict may depend on what they announced (the 227 that opened the
// pinhole its SYN is for).
func TestRunHandlesCopiesBeforeHeldPackets(t *testing.T) {
	j := &journal{}
	queue := &fakeHolder{fakeSource: fakeSource{name: "queue", j: j, fd: -1, rounds: [][]string{{"syn"}}}}
	log := &fakeSource{name: "log", j: j, fd: -1, rounds: [][]string{{"copy1", "copy2"}, {}}, end: io.EOF}
	// The queue first: the order of the sources must not matter.
	if err := run(t, context.Background(), &fakeHandler{j: j}, queue, log); err != nil {
		t.Fatal(err)
	}
	inOrder(t, j, "handle copy1", "handle copy2", "handle syn")
}

// Tick runs before the held packets get their verdicts, every round:
// what the round opened is committed there, and must be in the kernel
// before the packets go on. Release gets the verdicts Handle set.
func TestRunTicksBeforeRelease(t *testing.T) {
	j := &journal{}
	queue := &fakeHolder{fakeSource: fakeSource{name: "queue", j: j, fd: -1, rounds: [][]string{{"syn1"}, {"syn2", "syn3"}}}}
	log := &fakeSource{name: "log", j: j, fd: -1, rounds: [][]string{{}, {}}, end: io.EOF}
	h := &fakeHandler{j: j, verdicts: map[string]capture.Verdict{"syn1": capture.Admit, "syn2": capture.Retry}}
	if err := run(t, context.Background(), h, queue, log); err != nil {
		t.Fatal(err)
	}
	inOrder(t, j,
		"tick", // before the first round
		"handle syn1", "tick", "release queue syn1=admit",
		"handle syn2", "handle syn3", "tick", "release queue syn2=retry,syn3=accept")
}

// A source that ends (a capture file at its end) ends the loop without
// an error, and nothing is read after it.
func TestRunEndsWhenASourceEnds(t *testing.T) {
	j := &journal{}
	file := &fakeSource{name: "file", j: j, fd: -1, rounds: [][]string{{"a"}, {"b"}}, end: io.EOF}
	if err := run(t, context.Background(), &fakeHandler{j: j}, file); err != nil {
		t.Fatalf("Run = %v, want nil at the end of the file", err)
	}
	if n := j.count("read file"); n != 3 {
		t.Errorf("file read %d times, want 3 (two rounds, then its end): %q", n, j.all())
	}
}

// A source that fails, or a release that fails, ends the loop with the
// error.
func TestRunReturnsSourceErrors(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name    string
		sources func(j *journal) []capture.Source
	}{
		{"source", func(j *journal) []capture.Source {
			return []capture.Source{&fakeSource{name: "log", j: j, fd: -1, rounds: [][]string{{"a"}}, end: boom}}
		}},
		{"holder", func(j *journal) []capture.Source {
			return []capture.Source{&fakeHolder{fakeSource: fakeSource{name: "queue", j: j, fd: -1, end: boom}}}
		}},
		{"release", func(j *journal) []capture.Source {
			return []capture.Source{&fakeHolder{fakeSource: fakeSource{name: "queue", j: j, fd: -1}, releaseErr: boom}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := &journal{}
			done := runAsync(context.Background(), &fakeHandler{j: j}, tc.sources(j)...)
			if err := result(t, done, 2*time.Second); !errors.Is(err, boom) {
				t.Fatalf("Run = %v, want %v", err, boom)
			}
		})
	}
}

// The loop checks its context between rounds: a stop asked for during a
// round (a call on the loop, SIGTERM) ends it after that round.
func TestRunStopsBetweenRounds(t *testing.T) {
	j := &journal{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ticks := 0
	h := &fakeHandler{j: j, tick: func(time.Time) time.Time {
		if ticks++; ticks == 4 { // the first is before any round
			cancel()
		}
		return time.Time{}
	}}
	// It ends after 10 rounds at the latest, were the stop ignored.
	file := &fakeSource{name: "file", j: j, fd: -1, rounds: make([][]string, 10), end: io.EOF}
	if err := run(t, ctx, h, file); err != nil {
		t.Fatal(err)
	}
	if n := j.count("read file"); n != 3 {
		t.Errorf("%d rounds, want 3: the stop came in the third", n)
	}
}

// A stop ends a loop that waits on descriptors with no timer: the
// loop's own eventfd wakes it.
func TestRunStopsWhileWaiting(t *testing.T) {
	j := &journal{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src := &fakeSource{name: "src", j: j, fd: readyFd(t)}
	done := runAsync(ctx, &fakeHandler{j: j}, src)
	time.Sleep(20 * time.Millisecond) // into the wait
	cancel()
	if err := result(t, done, 2*time.Second); err != nil {
		t.Fatal(err)
	}
}

// A stop that comes while the loop waits is not followed by a round,
// even if a source became ready at the same time: the daemon is
// stopping, and what comes in now is no longer its business.
func TestRunReadsNothingAfterAStopInTheWait(t *testing.T) {
	j := &journal{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fd := readyFd(t)
	src := &fakeSource{name: "src", j: j, fd: fd}
	done := runAsync(ctx, &fakeHandler{j: j}, src)
	time.Sleep(20 * time.Millisecond) // into the wait
	cancel()
	ready(t, fd)
	if err := result(t, done, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if j.count("ready src") != 0 {
		t.Errorf("src read after the stop: %q", j.all())
	}
}

// With nothing ready, the loop sleeps until the time Tick asked for:
// neither longer (a pinhole's commit delay would stretch) nor in a busy
// loop up to it.
func TestRunWakesWhenTickAsks(t *testing.T) {
	j := &journal{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const wait = 50 * time.Millisecond
	var deadline, reached time.Time
	early := 0
	h := &fakeHandler{j: j, tick: func(now time.Time) time.Time {
		switch {
		case deadline.IsZero():
			deadline = now.Add(wait)
		case now.Before(deadline.Add(-2 * time.Millisecond)):
			early++
		case now.Before(deadline):
			// The wait is in whole milliseconds, rounded down: its last
			// one is spent in rounds that do not wait.
		default:
			reached = now
			cancel()
		}
		return deadline
	}}
	src := &fakeSource{name: "src", j: j, fd: readyFd(t)}
	done := runAsync(ctx, h, src)
	time.AfterFunc(2*time.Second, cancel) // were the timer ignored
	if err := result(t, done, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	if reached.IsZero() {
		t.Fatalf("Tick not called at its time (after %d early calls)", early)
	}
	if late := reached.Sub(deadline); late > 500*time.Millisecond {
		t.Errorf("Tick called %v after its time", late)
	}
	if early > 20 {
		t.Errorf("Tick called %d times well before its time: a busy wait", early)
	}
}

// When Tick has no wish, the loop sleeps until a descriptor is ready,
// then runs a round for it.
func TestRunWaitsForADescriptor(t *testing.T) {
	j := &journal{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fd := readyFd(t)
	src := &fakeSource{name: "src", j: j, fd: fd}
	done := runAsync(ctx, &fakeHandler{j: j}, src)
	time.Sleep(100 * time.Millisecond)
	if n := j.count("tick"); n > 20 {
		t.Errorf("%d Ticks before anything was ready: a busy wait", n)
	}
	ready(t, fd)
	for deadline := time.Now().Add(2 * time.Second); j.count("ready src") == 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := result(t, done, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	inOrder(t, j, "ready src", "tick")
}

// A source without a descriptor (a file) is always ready: the loop does
// not wait, on the other sources or on Tick's timer.
func TestRunNeverWaitsWithAFile(t *testing.T) {
	j := &journal{}
	idle := &fakeSource{name: "idle", j: j, fd: readyFd(t)}
	file := &fakeSource{name: "file", j: j, fd: -1, rounds: make([][]string, 5), end: io.EOF}
	h := &fakeHandler{j: j, tick: func(now time.Time) time.Time { return now.Add(time.Hour) }}
	done := runAsync(context.Background(), h, idle, file)
	if err := result(t, done, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if n := j.count("read file"); n != 6 {
		t.Errorf("file read %d times, want 6", n)
	}
	if j.index("read idle") < 0 {
		t.Error("the idle source was never read")
	}
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
