package capture

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// handoff passes values from other goroutines to the loop's: Push
// queues one and makes Fd readable, Take (on the loop) returns all
// queued. Calls and the control proxy are sources built on it.
type handoff[T any] struct {
	wake    int // an eventfd
	mu      sync.Mutex
	pending []T
}

func newHandoff[T any]() (*handoff[T], error) {
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("creating eventfd: %w", err)
	}
	return &handoff[T]{wake: fd}, nil
}

// Push queues v and wakes the loop.
func (h *handoff[T]) Push(v T) {
	h.mu.Lock()
	h.pending = append(h.pending, v)
	h.mu.Unlock()
	_, _ = unix.Write(h.wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
}

// Take clears the wake-up and returns what was queued.
func (h *handoff[T]) Take() []T {
	var b [8]byte
	_, _ = unix.Read(h.wake, b[:])
	h.mu.Lock()
	vs := h.pending
	h.pending = nil
	h.mu.Unlock()
	return vs
}

func (h *handoff[T]) Fd() int      { return h.wake }
func (h *handoff[T]) Close() error { return unix.Close(h.wake) }
