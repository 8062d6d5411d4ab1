package rules

import (
	"fmt"

	"github.com/google/nftables"
)

// committer sends queued changes to the kernel in batches. It owns the
// queue of changes (opQueue: AddPinhole, DelPinhole, ...), and queue
// turns each change into messages on conn.
type committer struct {
	conn  *nftables.Conn
	queue func(*nftables.Conn, op) error
	opQueue
}

// Commit sends every queued change in one netlink batch. If the batch
// fails, each change is retried on its own so that one bad element does
// not keep the others out; the first error is returned.
func (c *committer) Commit() error { return c.commit(c.take(false)) }

// CommitPeers sends the queued changes of control session peers.
func (c *committer) CommitPeers() error { return c.commit(c.take(true)) }

func (c *committer) commit(ops []op) error {
	if len(ops) == 0 {
		return nil
	}
	for _, o := range ops {
		if err := c.queue(c.conn, o); err != nil {
			return fmt.Errorf("queueing %v: %w", o, err)
		}
	}
	err := c.conn.Flush()
	if err == nil || len(ops) == 1 {
		if err != nil {
			return fmt.Errorf("committing %v: %w", ops[0], err)
		}
		return nil
	}
	var first error
	for _, o := range ops {
		if qerr := c.queue(c.conn, o); qerr != nil {
			return fmt.Errorf("queueing %v: %w", o, qerr)
		}
		if ferr := c.conn.Flush(); ferr != nil && first == nil {
			first = fmt.Errorf("committing %v: %w", o, ferr)
		}
	}
	return first
}
