package capture

import (
	"encoding/binary"
	"unsafe"

	"golang.org/x/sys/unix"
)

// netlinkMessages hands each message of a netlink datagram (type, and the
// data after the header) to fn, and stops at the first malformed one.
func netlinkMessages(b []byte, fn func(typ uint16, data []byte)) {
	for len(b) >= unix.NLMSG_HDRLEN {
		mlen := int(binary.NativeEndian.Uint32(b))
		if mlen < unix.NLMSG_HDRLEN || mlen > len(b) {
			return
		}
		fn(binary.NativeEndian.Uint16(b[4:]), b[unix.NLMSG_HDRLEN:mlen])
		next := (mlen + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
		if next >= len(b) {
			return
		}
		b = b[next:]
	}
}

// recvNonblocking reads one datagram without blocking. It is a raw
// system call: the Go scheduler need not hear of a call that cannot
// block, and telling it (entersyscall) wakes its monitor thread, which
// measurably cost more CPU than the read itself at one read per packet.
func recvNonblocking(fd int, b []byte, flags int) (int, error) {
	if len(b) == 0 {
		return 0, unix.EINVAL
	}
	n, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
		uintptr(flags|unix.MSG_DONTWAIT), 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// sendToKernel sends one datagram to the kernel on a non-blocking
// netlink socket, as a raw system call like recvNonblocking.
func sendToKernel(fd int, b []byte) error {
	var sa unix.RawSockaddrNetlink // the kernel
	sa.Family = unix.AF_NETLINK
	_, _, errno := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
		0, uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa))
	if errno != 0 {
		return errno
	}
	return nil
}
