package conntrack

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// From linux/netfilter/nfnetlink_queue.h.
const (
	nfqnlMsgPacket = 0
	nfqnlMsgConfig = 2
	nfqnlMsgBatch  = 3 // NFQNL_MSG_VERDICT_BATCH: every id up to the given one

	nfqaPacketHdr  = 1
	nfqaVerdictHdr = 2
	nfqaTimestamp  = 4
	nfqaPayload    = 10

	nfqaCfgCmd         = 1
	nfqaCfgParams      = 2
	nfqaCfgQueueMaxlen = 3
	nfqaCfgMask        = 4
	nfqaCfgFlags       = 5

	nfqnlCfgCmdBind   = 1
	nfqnlCfgCmdUnbind = 2
	nfqnlCopyPacket   = 2
	nfqaCfgFFailOpen  = 1

	nfAccept = 1
)

// QueueSource is the inline capture source: the kernel queues control
// packets to ftpgate (NFQUEUE) and holds each one until ftpgate has
// handled it and committed the pinholes it decided on. A reply that
// announces a passive port therefore reaches the client only after its
// pinhole exists, and the client's SYN cannot win the race. Every packet
// is accepted: ftpgate never drops control traffic.
type QueueSource struct {
	conn *netlink.Conn
	num  uint16
	log  *slog.Logger
}

// OpenQueue binds queue num in the given network namespace (0: current).
// The queue fails open when full, so control traffic never stalls.
func OpenQueue(num uint16, maxLen uint32, netns int, log *slog.Logger) (*QueueSource, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netns})
	if err != nil {
		return nil, fmt.Errorf("opening nfqueue socket: %w", err)
	}
	q := &QueueSource{conn: conn, num: num, log: log}
	_ = conn.SetOption(netlink.NoENOBUFS, true)
	_ = conn.SetReadBuffer(8 << 20)
	cmd := []byte{nfqnlCfgCmdBind, 0, 0, 0} // command, pad, pf (unused since Linux 3.8)
	params := binary.BigEndian.AppendUint32(nil, 0xffff)
	params = append(params, nfqnlCopyPacket)
	flags := binary.BigEndian.AppendUint32(nil, nfqaCfgFFailOpen)
	for _, attrs := range [][]netlink.Attribute{
		{{Type: nfqaCfgCmd, Data: cmd}},
		{
			{Type: nfqaCfgParams, Data: params},
			{Type: nfqaCfgQueueMaxlen, Data: binary.BigEndian.AppendUint32(nil, maxLen)},
			{Type: nfqaCfgMask, Data: flags},
			{Type: nfqaCfgFlags, Data: flags},
		},
	} {
		if err := q.config(attrs); err != nil {
			conn.Close()
			return nil, fmt.Errorf("binding NFQUEUE %d (used by another program? see --queue): %w", num, err)
		}
	}
	return q, nil
}

func (q *QueueSource) header() []byte {
	return []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, byte(q.num >> 8), byte(q.num)}
}

func (q *QueueSource) config(attrs []netlink.Attribute) error {
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return err
	}
	_, err = q.conn.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_QUEUE<<8 | nfqnlMsgConfig),
			Flags: netlink.Request | netlink.Acknowledge,
		},
		Data: append(q.header(), data...),
	})
	return err
}

// acceptUpTo releases every queued packet with an id up to id.
func (q *QueueSource) acceptUpTo(id uint32) error { return q.verdict(nfqnlMsgBatch, id) }

func (q *QueueSource) verdict(msg uint16, id uint32) error {
	hdr := binary.BigEndian.AppendUint32(nil, nfAccept)
	hdr = binary.BigEndian.AppendUint32(hdr, id)
	data, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: nfqaVerdictHdr, Data: hdr}})
	if err != nil {
		return err
	}
	_, err = q.conn.Send(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_QUEUE<<8 | msg),
			Flags: netlink.Request,
		},
		Data: append(q.header(), data...),
	})
	return err
}

// decode returns the packet and its queue id.
func (q *QueueSource) decode(m netlink.Message) (Packet, uint32, bool) {
	if m.Header.Type != netlink.HeaderType(unix.NFNL_SUBSYS_QUEUE<<8|nfqnlMsgPacket) || len(m.Data) < 4 {
		return Packet{}, 0, false
	}
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		return Packet{}, 0, false
	}
	ad.ByteOrder = binary.BigEndian
	var id uint32
	var haveID bool
	var payload []byte
	ts := time.Now()
	for ad.Next() {
		switch ad.Type() {
		case nfqaPacketHdr:
			if b := ad.Bytes(); len(b) >= 4 {
				id, haveID = binary.BigEndian.Uint32(b), true
			}
		case nfqaPayload:
			payload = ad.Bytes()
		case nfqaTimestamp:
			if b := ad.Bytes(); len(b) == 16 {
				ts = time.Unix(int64(binary.BigEndian.Uint64(b)), int64(binary.BigEndian.Uint64(b[8:]))*1000)
			}
		}
	}
	if !haveID {
		return Packet{}, 0, false
	}
	return Packet{
		Data: payload,
		Link: LinkTypeRawIP,
		CI:   gopacket.CaptureInfo{Timestamp: ts, CaptureLength: len(payload), Length: len(payload)},
	}, id, true
}

// Serve handles queued packets in the goroutine that reads them, which
// saves a hand-over per packet: for each burst read from the socket it
// lets handle decide on every packet and commit, then releases the whole
// burst with one batch verdict. It returns when ctx ends or the socket
// fails.
func (q *QueueSource) Serve(ctx context.Context, handle func(pkts []Packet) error) error {
	stop := context.AfterFunc(ctx, func() { q.conn.Close() })
	defer stop()
	var pkts []Packet
	for {
		msgs, err := q.conn.Receive()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("reading NFQUEUE %d: %w", q.num, err)
		}
		pkts = pkts[:0]
		var last uint32
		for _, m := range msgs {
			if p, id, ok := q.decode(m); ok {
				pkts = append(pkts, p)
				last = id
			}
		}
		if len(pkts) == 0 {
			continue
		}
		if err := handle(pkts); err != nil {
			q.log.Error("committing pinholes", "error", err)
		}
		// Accept whatever the commit said: a failed commit must not cut
		// the control connection.
		if err := q.acceptUpTo(last); err != nil {
			q.log.Error("releasing queued packets", "up_to_id", last, "error", err)
		}
	}
}

// Close unbinds the queue and closes the socket. Packets still queued are
// released by the kernel (the queue rules carry the bypass flag).
func (q *QueueSource) Close() error {
	_ = q.config([]netlink.Attribute{{Type: nfqaCfgCmd, Data: []byte{nfqnlCfgCmdUnbind, 0, 0, 0}}})
	_ = q.conn.Close()
	return nil
}
