// Package handoff passes values from other goroutines to the one that
// runs ftpgate's loop, waking it through a descriptor the loop polls with
// its packet sources.
package handoff

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// Queue passes values to the loop: Push queues one and makes Fd
// readable, Take (on the loop) returns all queued.
type Queue[T any] struct {
	wake    int // an eventfd
	mu      sync.Mutex
	pending []T
	closed  bool // wake is closed: its number may be another file's now
}

// New returns an empty queue.
func New[T any]() (*Queue[T], error) {
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("creating eventfd: %w", err)
	}
	return &Queue[T]{wake: fd}, nil
}

// Push queues v and wakes the loop; after Close it drops v (the loop is
// gone). The write is under the lock so that it never reaches a
// descriptor Close has released and another open has taken.
func (q *Queue[T]) Push(v T) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return
	}
	q.pending = append(q.pending, v)
	_, _ = unix.Write(q.wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
}

// Take clears the wake-up and returns what was queued.
func (q *Queue[T]) Take() []T {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.closed {
		var b [8]byte
		_, _ = unix.Read(q.wake, b[:])
	}
	vs := q.pending
	q.pending = nil
	return vs
}

// Fd is readable while values are queued.
func (q *Queue[T]) Fd() int { return q.wake }

// Close releases the descriptor; later Pushes are dropped.
func (q *Queue[T]) Close() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return nil
	}
	q.closed = true
	return unix.Close(q.wake)
}
