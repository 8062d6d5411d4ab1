package capture

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// requestTimeout bounds the wait for the kernel's acknowledgement of a
// configuration request. The kernel answers at once; an answer lost to
// an overflowing socket must not hang the start for ever.
const requestTimeout = 5 * time.Second

// requester sends configuration requests on a netlink socket that also
// carries what the kernel sends unasked: the records of an NFLOG group,
// the packets of a queue. Either may arrive between a request and its
// acknowledgement, so the acknowledgement is told by its type and
// sequence number, never by being the next datagram, and whatever else
// arrives meanwhile is kept for the next read rather than dropped: a
// copy of a control segment, or a held packet that would otherwise wait
// in the queue for a verdict that never comes.
type requester struct {
	conn *netlink.Conn
	fd   int
	seq  uint32
	// early holds the datagrams that arrived while a request waited;
	// closing, nothing will read them.
	early   [][]byte
	closing bool
	// overflowed counts the times the socket overflowed meanwhile.
	overflowed uint64
}

// request sends one message of type typ with data and waits for the
// kernel's acknowledgement of it, returning the error it reports.
func (r *requester) request(typ uint16, data []byte) error {
	r.seq++
	if r.seq == 0 {
		r.seq++ // 0 is what the kernel's unasked messages carry
	}
	seq := r.seq
	msg := binary.NativeEndian.AppendUint32(nil, uint32(unix.NLMSG_HDRLEN+len(data)))
	msg = binary.NativeEndian.AppendUint16(msg, typ)
	msg = binary.NativeEndian.AppendUint16(msg, unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	msg = binary.NativeEndian.AppendUint32(msg, seq)
	msg = binary.NativeEndian.AppendUint32(msg, 0) // port id: the kernel fills it in
	msg = append(msg, data...)
	for {
		err := sendToKernel(r.fd, msg)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("sending: %w", err)
		}
		break
	}
	raw, err := r.conn.SyscallConn()
	if err != nil {
		return err
	}
	if err := r.conn.SetReadDeadline(time.Now().Add(requestTimeout)); err != nil {
		return err
	}
	defer func() { _ = r.conn.SetReadDeadline(time.Time{}) }()
	buf := make([]byte, 1<<17)
	for {
		var n int
		var rerr error
		err := raw.Read(func(fd uintptr) bool {
			n, rerr = recvNonblocking(int(fd), buf, 0)
			return !errors.Is(rerr, unix.EAGAIN)
		})
		switch {
		case err != nil:
			return fmt.Errorf("waiting for the kernel's answer: %w", err)
		case errors.Is(rerr, unix.EINTR):
			continue
		case errors.Is(rerr, unix.ENOBUFS):
			r.overflowed++ // records lost, perhaps the answer too: the deadline says
			continue
		case rerr != nil:
			return fmt.Errorf("waiting for the kernel's answer: %w", rerr)
		}
		if errno, ok := ackOf(buf[:n], typ, seq); ok {
			if errno != 0 {
				return errno
			}
			return nil
		}
		if !r.closing {
			r.early = append(r.early, append([]byte(nil), buf[:n]...))
		}
	}
}

// takeEarly hands over the datagrams that arrived during requests.
func (r *requester) takeEarly() [][]byte {
	e := r.early
	r.early = nil
	return e
}

// ackOf finds, in a datagram, the kernel's acknowledgement (NLMSG_ERROR,
// with error 0 on success) of the request of type typ and sequence seq:
// the acknowledgement carries the error and the request's own header,
// whose type and sequence must be the request's.
func ackOf(b []byte, typ uint16, seq uint32) (errno syscall.Errno, found bool) {
	netlinkMessages(b, func(t uint16, data []byte) {
		if found || t != unix.NLMSG_ERROR || len(data) < 4+unix.NLMSG_HDRLEN {
			return
		}
		orig := data[4:]
		if binary.NativeEndian.Uint16(orig[4:]) == typ && binary.NativeEndian.Uint32(orig[8:]) == seq {
			errno, found = syscall.Errno(-int32(binary.NativeEndian.Uint32(data))), true
		}
	})
	return errno, found
}
