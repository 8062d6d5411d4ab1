package capture

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Handler takes what the sources deliver.
type Handler interface {
	// Handle takes one packet; for a Held one it sets the Verdict.
	Handle(p *Packet)
	// Tick is called after every round of packets, before held packets
	// are released, and when the time it last returned has come; it
	// returns when it wants to be called next (zero: no wish).
	Tick(now time.Time) time.Time
}

// Run waits on the sources and hands their packets to h until ctx ends,
// a source fails, or one that is not a descriptor (a file) ends. It runs
// on the calling goroutine only.
//
// Each round reads the Holders first, then every other source, and hands
// the other sources' packets to h before the held ones: the kernel writes
// a copy (NFLOG) before the packet it copies goes on, so every copy
// logged before a held packet was queued is read, and handled, before
// it. Then h.Tick runs, then the held packets get their verdicts.
func Run(ctx context.Context, h Handler, sources ...Source) error {
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("creating eventfd: %w", err)
	}
	closeWake := wakeOnStop(ctx, wake)
	defer closeWake()
	l := newLoop(h, wake, sources)
	next := h.Tick(time.Now())
	for ctx.Err() == nil {
		if !l.always {
			if err := l.wait(next); err != nil {
				return err
			}
			if ctx.Err() != nil {
				break
			}
		}
		var ended bool
		if next, ended, err = l.round(); ended || err != nil {
			return err
		}
	}
	return nil
}

// wakeOnStop writes to wake when ctx ends, and returns what closes wake.
func wakeOnStop(ctx context.Context, wake int) (closeWake func()) {
	// The stop's write comes on a goroutine of its own, possibly after
	// the loop saw the stop and returned: the eventfd is closed only once
	// it is written, or the write would land in whatever descriptor
	// takes its number next.
	woken := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_, _ = unix.Write(wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		close(woken)
	})
	return func() {
		if !stop() {
			<-woken
		}
		unix.Close(wake)
	}
}

// loop is what Run keeps between rounds.
type loop struct {
	h       Handler
	holders []Holder
	others  []Source
	sharers []Sharer
	fds     []unix.PollFd // the wake eventfd, then the sources'
	always  bool          // a source without a descriptor: never wait
	held    []*Packet     // this round's, handled after the others'
	collect func(*Packet) // made once: a closure per Read would allocate
}

func newLoop(h Handler, wake int, sources []Source) *loop {
	l := &loop{h: h, fds: []unix.PollFd{{Fd: int32(wake), Events: unix.POLLIN}}}
	l.collect = func(p *Packet) { l.held = append(l.held, p) }
	for _, s := range sources {
		if sh, ok := s.(Sharer); ok {
			l.sharers = append(l.sharers, sh)
		}
		if hs, ok := s.(Holder); ok {
			l.holders = append(l.holders, hs)
		} else {
			l.others = append(l.others, s)
		}
		if s.Fd() < 0 {
			l.always = true
		} else {
			l.fds = append(l.fds, unix.PollFd{Fd: int32(s.Fd()), Events: unix.POLLIN})
		}
	}
	return l
}

// wait returns when a descriptor is ready, next has come (zero: no
// timer), or a signal interrupted the wait.
func (l *loop) wait(next time.Time) error {
	timeout := -1
	if !next.IsZero() {
		timeout = max(0, int(time.Until(next)/time.Millisecond))
	}
	wait := poll
	for _, sh := range l.sharers {
		if sh.SharesProcessor() {
			wait = pollShared
			break
		}
	}
	if err := wait(l.fds, timeout); err != nil && !errors.Is(err, unix.EINTR) {
		return fmt.Errorf("waiting for packets: %w", err)
	}
	return nil
}

// round is one round of Run: the reads, the held packets to h, Tick,
// the verdicts. ended: a source that is not a Holder ended.
func (l *loop) round() (next time.Time, ended bool, err error) {
	if ended, err := l.read(); ended || err != nil {
		return time.Time{}, ended, err
	}
	for _, p := range l.held {
		l.h.Handle(p)
	}
	next = l.h.Tick(time.Now())
	for _, s := range l.holders {
		if err := s.Release(); err != nil {
			return next, false, err
		}
	}
	return next, false, nil
}

// read reads the Holders, keeping their packets for later, then the
// other sources, whose packets go to h at once (Run says why in this
// order).
func (l *loop) read() (ended bool, err error) {
	l.held = l.held[:0]
	for _, s := range l.holders {
		if err := s.Read(l.collect); err != nil {
			return false, err
		}
	}
	for _, s := range l.others {
		if err := s.Read(l.h.Handle); err != nil {
			if errors.Is(err, io.EOF) {
				return true, nil
			}
			return false, err
		}
	}
	return false, nil
}

// poll waits for the loop's descriptors. Under load it is poll(2) as a
// raw system call: the loop runs on one Go processor (GOMAXPROCS 1), and
// blocking through the scheduler's syscall entry lets its monitor thread
// take the processor away after 20 µs and hand it back on wakeup, which
// at thousands of wakeups a second cost more CPU than ftpgate's own work
// (perf: the monitor's nanosleeps and a second thread's wakeups). Held
// raw, the processor stays with the loop. The runtime still preempts a
// goroutine that holds it for 10 ms, with a signal that ends the poll
// (EINTR), so a raw wait is kept shorter than that; only an idle daemon
// then waits through the scheduler, once per quiet spell.
func poll(fds []unix.PollFd, timeoutMs int) error {
	const rawMs = 5
	raw := rawMs
	if timeoutMs >= 0 {
		raw = min(timeoutMs, rawMs)
	}
	n, err := pollRaw(fds, raw)
	if n != 0 || err != nil || (timeoutMs >= 0 && timeoutMs <= rawMs) {
		return err
	}
	if timeoutMs > 0 {
		timeoutMs -= rawMs
	}
	_, err = unix.Poll(fds, timeoutMs)
	return err
}

// pollShared waits through the scheduler, which hands the processor to
// other goroutines meanwhile.
func pollShared(fds []unix.PollFd, timeoutMs int) error {
	_, err := unix.Poll(fds, timeoutMs)
	return err
}

func pollRaw(fds []unix.PollFd, timeoutMs int) (int, error) {
	ts := unix.NsecToTimespec(int64(timeoutMs) * int64(time.Millisecond))
	n, _, errno := unix.RawSyscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&fds[0])), uintptr(len(fds)),
		uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}
