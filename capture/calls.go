package capture

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// Calls is a source of function calls to run on the loop's goroutine,
// which owns the tracker: a status request or a configuration reload from
// another goroutine is handed over here. It delivers no packets.
type Calls struct {
	wake    int
	mu      sync.Mutex
	pending []func()
}

// NewCalls returns an empty Calls.
func NewCalls() (*Calls, error) {
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("creating eventfd: %w", err)
	}
	return &Calls{wake: fd}, nil
}

// Do queues f; it runs at the loop's next round.
func (c *Calls) Do(f func()) {
	c.mu.Lock()
	c.pending = append(c.pending, f)
	c.mu.Unlock()
	_, _ = unix.Write(c.wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
}

// Fd becomes readable when calls are queued.
func (c *Calls) Fd() int { return c.wake }

// Read runs the queued calls; fn is not called.
func (c *Calls) Read(func(*Packet)) error {
	var b [8]byte
	_, _ = unix.Read(c.wake, b[:])
	c.mu.Lock()
	calls := c.pending
	c.pending = nil
	c.mu.Unlock()
	for _, f := range calls {
		f()
	}
	return nil
}

// Close releases the descriptor.
func (c *Calls) Close() error { return unix.Close(c.wake) }
