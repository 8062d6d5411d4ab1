// Package nlattr walks netlink attributes as the kernel lays them out,
// for the sockets ftpgate reads by hand (NFLOG, NFQUEUE, ctnetlink).
package nlattr

import (
	"encoding/binary"

	"golang.org/x/sys/unix"
)

// Walk hands each attribute (type without the nested and byte order
// flags, and value) to fn, and stops at the first malformed one.
func Walk(b []byte, fn func(typ uint16, v []byte)) {
	for len(b) >= 4 {
		alen := int(binary.NativeEndian.Uint16(b))
		if alen < 4 || alen > len(b) {
			return
		}
		fn(binary.NativeEndian.Uint16(b[2:])&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER), b[4:alen])
		next := (alen + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
		if next >= len(b) {
			return
		}
		b = b[next:]
	}
}
