package capture

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/ftpgate/ftpgate/internal/nlattr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// From linux/netfilter/nfnetlink_log.h; golang.org/x/sys lacks them.
const (
	nfulnlMsgPacket    = 0
	nfulnlMsgConfig    = 1
	nfulaPayload       = 9
	nfulaPrefix        = 10
	nfulaCfgCmd        = 1
	nfulaCfgMode       = 2
	nfulaCfgNlBufSiz   = 3
	nfulaCfgTimeout    = 4
	nfulaCfgQThresh    = 5
	nfulnlCfgCmdBind   = 1
	nfulnlCfgCmdUnbind = 2
	nfulnlCopyPacket   = 2
)

// Classify says what a record of the group is, by the prefix of the
// rule that logged it: a Copy, a Used report, or nothing to hand on.
type Classify func(prefix []byte) (Kind, bool)

// LogReader reads one NFLOG group: the copies of control segments
// inline capture logs, and the reports of used pinholes. Reads never
// block, so the loop can read everything the kernel logged before it
// decides on a held packet: the kernel writes each record before the
// logged packet goes on, so the records of every packet that came
// earlier are already waiting.
type LogReader struct {
	conn     *netlink.Conn
	fd       int
	req      requester
	group    uint16
	classify Classify
	buf      []byte
	pkts     []Packet
	// closed is set before the socket closes, so that Read, which
	// reads the descriptor directly, never reads a reused one.
	closed atomic.Bool
	// lost counts the times the socket overflowed and records were
	// lost; datagrams and records count what Read read (with batching,
	// one datagram carries several records).
	lost, datagrams, records atomic.Uint64
}

// OpenLog binds the NFLOG group in the given network namespace (0: the
// current one), copying whole packets and delivering each record at once.
// Only one process per namespace can bind a group.
func OpenLog(group uint16, netns int, classify Classify) (*LogReader, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netns})
	if err != nil {
		return nil, fmt.Errorf("opening nflog socket: %w", err)
	}
	l := &LogReader{conn: conn, group: group, classify: classify, buf: make([]byte, 1<<17)}
	fail := func(err error) (*LogReader, error) {
		conn.Close()
		return nil, err
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		return fail(fmt.Errorf("nflog socket: %w", err))
	}
	_ = raw.Control(func(fd uintptr) {
		l.fd = int(fd)
		l.req = requester{conn: conn, fd: l.fd}
		// Bursts of control traffic must not overflow the socket while
		// the daemon commits; FORCE passes net.core.rmem_max (root only).
		if unix.SetsockoptInt(l.fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20) != nil {
			_ = unix.SetsockoptInt(l.fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
		}
	})
	if err := l.config([]netlink.Attribute{{Type: nfulaCfgCmd, Data: []byte{nfulnlCfgCmdBind}}}); err != nil {
		return fail(fmt.Errorf("binding NFLOG group %d (is another ftpgate running, or another program using it? see --nflog-group): %w", group, err))
	}
	mode := make([]byte, 6)
	binary.BigEndian.PutUint32(mode, 0xffff)
	mode[4] = nfulnlCopyPacket
	qthresh := binary.BigEndian.AppendUint32(nil, 1) // deliver each packet at once, not in batches
	if err := l.config([]netlink.Attribute{{Type: nfulaCfgMode, Data: mode}, {Type: nfulaCfgQThresh, Data: qthresh}}); err != nil {
		return fail(fmt.Errorf("configuring NFLOG group %d: %w", group, err))
	}
	return l, nil
}

// SetBatch lets the kernel gather up to records log records (and at most
// bufBytes of them) before it delivers them in one datagram, or after
// wait if fewer come. One wakeup of the daemon then reads many copies
// instead of one. A rule whose log statement has a lower queue-threshold
// still has its record, and every record batched before it, delivered at
// once. records 1 turns batching off. The kernel counts wait in
// hundredths of a second; 0 means its next timer tick (4 ms at HZ=250).
//
// The equivalent of libnetfilter_log's nflog_set_qthresh,
// nflog_set_timeout and nflog_set_nlbufsiz.
func (l *LogReader) SetBatch(records, bufBytes uint32, wait time.Duration) error {
	if records == 0 {
		records = 1
	}
	// The kernel refuses a buffer smaller than its default (one page)
	// or larger than 128 KiB, and the reader must hold a whole datagram.
	bufBytes = min(max(bufBytes, 4096), 1<<17, uint32(len(l.buf)))
	attrs := []netlink.Attribute{
		{Type: nfulaCfgQThresh, Data: binary.BigEndian.AppendUint32(nil, records)},
		{Type: nfulaCfgTimeout, Data: binary.BigEndian.AppendUint32(nil, uint32(wait/(10*time.Millisecond)))},
		{Type: nfulaCfgNlBufSiz, Data: binary.BigEndian.AppendUint32(nil, bufBytes)},
	}
	if err := l.config(attrs); err != nil {
		return fmt.Errorf("setting NFLOG group %d to deliver %d records at once: %w", l.group, records, err)
	}
	return nil
}

func (l *LogReader) config(attrs []netlink.Attribute) error {
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return err
	}
	hdr := []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, byte(l.group >> 8), byte(l.group)}
	err = l.req.request(unix.NFNL_SUBSYS_ULOG<<8|nfulnlMsgConfig, append(hdr, data...))
	l.lost.Add(l.req.overflowed)
	l.req.overflowed = 0
	return err
}

// Fd is the socket to poll for records.
func (l *LogReader) Fd() int { return l.fd }

// Lost reports how many times the socket overflowed and records were
// lost.
func (l *LogReader) Lost() uint64 { return l.lost.Load() }

// Counts reports how many datagrams and records Read has read.
func (l *LogReader) Counts() (datagrams, records uint64) { return l.datagrams.Load(), l.records.Load() }

// Read hands every record already waiting that classify keeps to fn,
// without blocking. An overflow of the socket is counted (Lost) and is
// not an error.
func (l *LogReader) Read(fn func(*Packet)) error {
	now := time.Now()
	// Records that came while a configuration request waited for its
	// answer come first: they were logged first.
	for _, b := range l.req.takeEarly() {
		l.deliver(b, now, fn)
	}
	for !l.closed.Load() {
		n, err := recvNonblocking(l.fd, l.buf, 0)
		switch {
		case errors.Is(err, unix.EAGAIN):
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ENOBUFS):
			l.lost.Add(1)
			continue
		case err != nil:
			return fmt.Errorf("reading NFLOG group %d: %w", l.group, err)
		}
		l.deliver(l.buf[:n], now, fn)
	}
	return nil
}

// deliver hands the records of one datagram that classify keeps to fn.
func (l *LogReader) deliver(b []byte, now time.Time, fn func(*Packet)) {
	l.datagrams.Add(1)
	l.pkts = l.pkts[:0]
	l.records.Add(uint64(parseLogMessages(b, func(prefix, payload []byte) {
		if kind, ok := l.classify(prefix); ok {
			l.pkts = append(l.pkts, Packet{Data: payload, Link: LinkTypeRawIP, Time: now, Kind: kind})
		}
	})))
	for i := range l.pkts {
		fn(&l.pkts[i])
	}
}

// parseLogMessages walks the netlink messages of one datagram and hands
// each logged packet, with the rule's log prefix (without its NUL), to
// fn. Malformed parts are skipped.
func parseLogMessages(b []byte, fn func(prefix, payload []byte)) int {
	count := 0
	netlinkMessages(b, func(typ uint16, data []byte) {
		if typ != unix.NFNL_SUBSYS_ULOG<<8|nfulnlMsgPacket || len(data) < 4 {
			return
		}
		var prefix, payload []byte
		nlattr.Walk(data[4:], func(typ uint16, v []byte) {
			switch typ {
			case nfulaPayload:
				payload = v
			case nfulaPrefix:
				prefix = bytes.TrimRight(v, "\x00")
			}
		})
		if payload != nil {
			fn(prefix, payload)
			count++
		}
	})
	return count
}

// Close unbinds the group and closes the socket.
func (l *LogReader) Close() error {
	if !l.closed.Swap(true) {
		l.req.closing = true
		_ = l.config([]netlink.Attribute{{Type: nfulaCfgCmd, Data: []byte{nfulnlCfgCmdUnbind}}})
	}
	_ = l.conn.Close()
	return nil
}
