// Package inetsum is the Internet checksum (RFC 1071) as IPv4, IPv6 and
// TCP use it: conntrack checks it on every segment it decodes, and nat
// writes it on every segment it rewrites.
package inetsum

import "encoding/binary"

// Sum adds b as big-endian 16-bit words to s, without folding.
func Sum(b []byte, s uint32) uint32 {
	acc := uint64(s)
	for len(b) >= 8 {
		v := binary.BigEndian.Uint64(b)
		acc += v >> 48
		acc += (v >> 32) & 0xffff
		acc += (v >> 16) & 0xffff
		acc += v & 0xffff
		b = b[8:]
	}
	for len(b) >= 2 {
		acc += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint64(b[0]) << 8
	}
	for acc > 0xffffffff {
		acc = acc>>32 + acc&0xffffffff
	}
	return uint32(acc)
}

// Fold folds a 32-bit one's-complement sum to 16 bits.
func Fold(s uint32) uint16 {
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// Pseudo is the sum of a TCP (proto 6) or UDP pseudo-header: both
// addresses, as 4 or 16 bytes each in a row, the protocol and the
// length of the transport header and payload.
func Pseudo(addrs []byte, proto uint8, length int) uint32 {
	return Sum(addrs, uint32(proto)+uint32(length))
}
