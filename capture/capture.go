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
	// Line is a whole line the control proxy read (Data, with its line
	// end). Like Held, it waits: what the handler puts in Out (or, if
	// Out is nil, Data) goes on when its source is released.
	Line
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

	// The control proxy's packets (Opened, Line, Closed):
	Conn       *ProxiedConn
	FromServer bool // a Line the server sent
	// Forwarded: a Line the proxy has sent on already, as it was (it
	// cannot change what is relayed); Out and Raw are not read.
	Forwarded bool
	// Out is set by whoever handles a Line: what to send on instead.
	Out []byte
	// Raw is set by whoever handles a Line when, after it, neither
	// direction carries lines any more (TLS begins): the proxy then
	// relays bytes as they come.
	Raw bool
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
