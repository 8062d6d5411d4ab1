package capture

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nfqaCfgFConntrack is NFQA_CFG_F_CONNTRACK: queued packets carry their
// conntrack entry, and a verdict may change it (seqadj among it).
const nfqaCfgFConntrack = 0x02

// ProbeQueueConntrack reports whether NFQUEUE can carry conntrack
// attributes on this kernel (CONFIG_NETFILTER_NETLINK_GLUE_CT, Linux
// 4.3): what a verdict that rewrites a control segment would need to have
// the kernel adjust sequence numbers. It binds queue num for a moment, in
// netns (0: the current one), and asks for the flag, which the kernel
// refuses with EOPNOTSUPP without the glue. An error means the probe
// could not tell (the queue is in use, no nfnetlink_queue).
func ProbeQueueConntrack(num uint16, netns int) (bool, error) {
	q, err := dialQueue(num, netns)
	if err != nil {
		return false, err
	}
	// Closing the socket unbinds the queue.
	defer q.conn.Close()
	if err := q.config(bindCommand); err != nil {
		return false, fmt.Errorf("binding NFQUEUE %d to probe it: %w", num, err)
	}
	return q.askConntrack()
}

// askConntrack asks the bound queue for conntrack attributes and, if the
// kernel has them, switches them off again: ftpgate does not use them
// yet, and they make every queued packet longer.
func (q *QueueSource) askConntrack() (bool, error) {
	flag := binary.BigEndian.AppendUint32(nil, nfqaCfgFConntrack)
	err := q.config([]netlink.Attribute{{Type: nfqaCfgMask, Data: flag}, {Type: nfqaCfgFlags, Data: flag}})
	switch {
	case err == nil:
		off := binary.BigEndian.AppendUint32(nil, 0)
		if err := q.config([]netlink.Attribute{{Type: nfqaCfgMask, Data: flag}, {Type: nfqaCfgFlags, Data: off}}); err != nil {
			return true, fmt.Errorf("switching NFQUEUE %d's conntrack attributes off again: %w", q.num, err)
		}
		return true, nil
	case errors.Is(err, unix.EOPNOTSUPP):
		return false, nil
	default:
		return false, fmt.Errorf("asking NFQUEUE %d for conntrack attributes: %w", q.num, err)
	}
}
