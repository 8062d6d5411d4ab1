// Package capture brings packets in and verdicts out: the kernel's NFLOG
// copies and NFQUEUE holds, AF_PACKET copies from interfaces, pcap and
// pcapng files, and the one loop that waits on them. It decides nothing:
// what a packet means is conntrack's business, and cmd/ftpgate joins the
// two.
//
// Every source has the same small shape (Source): a descriptor to wait
// on and a Read that hands over what is ready without blocking. A source
// whose packets wait in the kernel for a verdict is also a Holder. A new
// source (an eBPF ring) is one new file. Work for the loop that is not
// packets (status requests, the control proxy of package nat) comes as
// a Source that delivers none and does its work in Read (see Calls).
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
	// Drop drops it: its sender sends it again.
	Drop
)

// Packet is one captured packet.
type Packet struct {
	// Data starts at the link-layer header of Link. It is valid until
	// the next Read of its source.
	Data []byte
	Link layers.LinkType
	Time time.Time
	Kind Kind
	// Hook is the netfilter hook a Held packet was queued at
	// (HookPrerouting...).
	Hook uint8
	// Verdict is set by whoever handles a Held packet.
	Verdict Verdict
	// Replace, set with Accept, is the packet to let go on in this one's
	// place, from its IP header: checksums and lengths its sender's
	// business (the kernel takes it as it is).
	Replace []byte
	// KernelShifts, with Replace: the kernel shifts the sequence numbers
	// of the connection's later segments by the change of length. The
	// verdict carries an NFQA_CT, which is what makes a kernel with the
	// glue (CONFIG_NETFILTER_NETLINK_GLUE_CT) record it in the
	// connection's seqadj extension (nfqnl_recv_verdict); without the
	// glue the kernel ignores it. The NFQA_CT also takes the
	// connection's helper away (CTA_HELP with no name): the helper stub
	// that gave it seqadj (nat.RegisterHelperStub) is a userspace one,
	// and the kernel shifts a queued packet of a connection with such a
	// helper once more as it reinjects it (nf_confirm_cthelper), as if
	// the helper had queued it, then again at confirmation. The
	// extension stays without the helper.
	KernelShifts bool
}

// The netfilter hooks (NF_INET_*) of Packet.Hook.
const (
	HookPrerouting  = 0
	HookInput       = 1
	HookForward     = 2
	HookOutput      = 3
	HookPostrouting = 4
)

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

// Holder is a Source whose Held packets wait in the kernel, or whose
// work waits for the round's Tick in some other way (the control proxy's
// bytes, which go on only once what they opened is committed).
type Holder interface {
	Source
	// Release gives every packet of the last Read its Verdict.
	Release() error
}

// Sharer is a source whose own goroutines do work the loop waits for
// (the control proxy's relays): while SharesProcessor says so, the loop
// waits through the Go scheduler, not in a raw poll that would keep them
// from running until it times out.
type Sharer interface{ SharesProcessor() bool }
