package capture

import (
	"encoding/binary"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// nlmsg builds one netlink message.
func nlmsg(typ uint16, seq uint32, data []byte) []byte {
	b := binary.NativeEndian.AppendUint32(nil, uint32(unix.NLMSG_HDRLEN+len(data)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = binary.NativeEndian.AppendUint16(b, 0)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0)
	return append(b, data...)
}

// ack is the kernel's answer to the request of type typ and sequence seq.
func ack(typ uint16, seq uint32, errno syscall.Errno) []byte {
	data := binary.NativeEndian.AppendUint32(nil, uint32(-int32(errno)))
	return nlmsg(unix.NLMSG_ERROR, seq, append(data, nlmsg(typ, seq, nil)...))
}

// TestAckOf: only the answer to this request is taken for it; a logged
// packet, the answer to another request and the error of a verdict
// (sequence 0) are not.
func TestAckOf(t *testing.T) {
	const cfg = unix.NFNL_SUBSYS_ULOG<<8 | nfulnlMsgConfig
	packet := nlmsg(unix.NFNL_SUBSYS_ULOG<<8|nfulnlMsgPacket, 0, []byte{unix.AF_INET, 0, 0x08, 0x49})
	for _, tc := range []struct {
		name  string
		dgram []byte
		found bool
		errno syscall.Errno
	}{
		{"a logged packet", packet, false, 0},
		{"two logged packets", append(append([]byte(nil), packet...), packet...), false, 0},
		{"the answer", ack(cfg, 7, 0), true, 0},
		{"the answer, an error", ack(cfg, 7, unix.EBUSY), true, unix.EBUSY},
		{"another request's answer", ack(cfg, 6, 0), false, 0},
		{"a verdict's error", ack(unix.NFNL_SUBSYS_QUEUE<<8|nfqnlMsgVerdict, 0, unix.ENOENT), false, 0},
		{"an answer of this sequence to another type", ack(unix.NFNL_SUBSYS_QUEUE<<8|nfqnlMsgConfig, 7, 0), false, 0},
		{"truncated", ack(cfg, 7, 0)[:20], false, 0},
	} {
		errno, found := ackOf(tc.dgram, cfg, 7)
		if found != tc.found || errno != tc.errno {
			t.Errorf("%s: found %v errno %v, want %v %v", tc.name, found, errno, tc.found, tc.errno)
		}
	}
}
