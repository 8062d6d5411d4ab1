// Package capture brings packets in and verdicts out: the kernel's NFLOG
// copies and NFQUEUE holds, AF_PACKET copies from interfaces, pcap and
// pcapng files, and the one loop that waits on them. It decides nothing:
// what a packet means is conntrack's business, and cmd/ftpgate joins the
// two.
//
// Every source has the same small shape (Source): a descriptor to wait
// on and a Read that hands over what is ready without blocking. A source
// whose packets wait in the kernel for a verdict is also a Holder. A new
// source (a transparent control proxy, an eBPF ring) is one new file.
package capture

import (
	"time"

	"github.com/gopacket/gopacket/layers"
)

// Kind says what a packet is to ftpgate.
type Kind uint8

const (
	// Copy is a copy of a packet: FTP control traffic.
	Copy Kind = iota
	// Used is the kernel's report of the first packet of a data
	// connection that used a pinhole.
	Used
	// Held is a packet the kernel holds until it is given a Verdict.
	Held
	// Admitted is the kernel's report, from after the admin's filter
	// chains, of the first packet of a data connection ftpgate admitted.
	Admitted
	// Opened: a translated control connection reached the control
	// proxy, and the proxy reached its server (Conn).
	Opened
	// Bytes are what the control proxy read from one side (Data; Ack,
	// how much of the other side it had sent on). Like Held, they wait:
	// what the handler puts in Out goes on when the source is released,
	// and Through says how much of this side has gone on in all.
	Bytes
	// EOF: one side of a proxied connection closed.
	EOF
	// Closed: a proxied connection ended; Data says why.
	Closed
)

// Verdict is what becomes of a held packet.
type Verdict uint8

const (
	// Accept lets it go on through the rest of the ruleset.
	Accept Verdict = iota
	// Admit sends it through ftpgate's chain again with the admit mark
	// (see QueueConfig.Mark), which the chain moves to its connection.
	Admit
	// Retry sends it through ftpgate's chain again without the mark.
	Retry
)

// Packet is one captured packet.
type Packet struct {
	// Data starts at the link-layer header of Link. It is valid until
	// the next Read of its source.
	Data []byte
	Link layers.LinkType
	Time time.Time
	Kind Kind
	// Verdict is set by whoever handles a Held packet.
	Verdict Verdict

	// The control proxy's packets (Opened, Bytes, EOF, Closed):
	Conn       *ProxiedConn
	FromServer bool   // bytes the server sent
	Ack        uint32 // Bytes: of the other side, what the proxy had sent on when it read them
	// Out, Through and Close are set by whoever handles Bytes: what to
	// send on, how much of this side has gone on in all, and whether the
	// connection must close instead.
	Out     []byte
	Through uint32
	Close   bool
}

// LinkTypeRawIP is the link type of sources that deliver packets from
// the IP header (NFLOG, NFQUEUE, AF_PACKET SOCK_DGRAM): the version
// nibble tells IPv4 from IPv6.
const LinkTypeRawIP = layers.LinkTypeRaw

// Source is anything packets come from.
type Source interface {
	// Fd is a descriptor that becomes readable when Read has packets,
	// or -1 for a source that is ready until it ends (a file).
	Fd() int
	// Read hands every packet that is ready to fn, without blocking,
	// and returns io.EOF once the source has ended.
	Read(fn func(*Packet)) error
	Close() error
}

// Holder is a Source whose Held packets wait in the kernel.
type Holder interface {
	Source
	// Release gives every packet of the last Read its Verdict.
	Release() error
}
