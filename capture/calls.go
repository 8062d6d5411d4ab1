package capture

import "github.com/ftpgate/ftpgate/internal/handoff"

// Calls is a source of function calls to run on the loop's goroutine,
// which owns the tracker: a status request or a configuration reload from
// another goroutine is handed over here. It delivers no packets.
type Calls struct {
	q *handoff.Queue[func()]
}

// NewCalls returns an empty Calls.
func NewCalls() (*Calls, error) {
	q, err := handoff.New[func()]()
	if err != nil {
		return nil, err
	}
	return &Calls{q: q}, nil
}

// Do queues f; it runs at the loop's next round.
func (c *Calls) Do(f func()) { c.q.Push(f) }

// Fd becomes readable when calls are queued.
func (c *Calls) Fd() int { return c.q.Fd() }

// Read runs the queued calls; fn is not called.
func (c *Calls) Read(func(*Packet)) error {
	for _, f := range c.q.Take() {
		f()
	}
	return nil
}

// Close releases the descriptor.
func (c *Calls) Close() error { return c.q.Close() }
