package rules

import (
	"encoding/binary"
	"slices"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// NATConfig turns on ftpgate's side of a NAT gateway: the NAT maps of
// data connections and the rules that send translated control
// connections to its control proxy.
//
// The admin's own NAT rules decide which control connections are
// translated; ftpgate only looks at the result. A new control connection
// that the admin's rules translated (conntrack status snat or dnat) has
// its first SYN dropped after source NAT, at the very end of the
// forward path, where all of the admin's rules have already accepted it,
// and its original tuple goes into ftp_control_to_proxy_v4/v6. The client sends
// the SYN again (after about a second) and the proxy chain hands that
// one to the control proxy with tproxy: the proxy terminates the
// connection and opens its own to the server, from the client's address,
// which the admin's NAT rules translate as they would have the client's.
// A control proxy regenerates whole lines, so rewriting an announcement
// to a longer or shorter address needs no sequence number adjustment,
// which this kernel cannot do for userspace (no
// CONFIG_NETFILTER_NETLINK_GLUE_CT). Untranslated control connections
// never reach the proxy.
type NATConfig struct {
	// ProxyPort is the control proxy's port on 127.0.0.1 and ::1.
	ProxyPort uint16
	// RouteMark is the packet mark bit of packets that go to the proxy;
	// a policy routing rule (see nat.ProxyRoutes) delivers them
	// locally.
	RouteMark uint32
	// SocketMark is the packet mark of the proxy's own sockets, whose
	// packets ftpgate's chains leave alone.
	SocketMark uint32
	// Ports are the control ports, as the servers listen on them.
	Ports []uint16

	// Packet runs translated control connections through the packet
	// path instead of the proxy: nothing is dropped, and every segment
	// of theirs is queued to Queue, both ways (packetQueueRules), for
	// ftpgate to rewrite and shift. A connection stays queued while
	// segments come at least every TranslatedTimeout (ftpgate forgets it
	// sooner when it ends). ProxyPort and the marks are then unused.
	//
	// A connection whose sequence numbers ftpgate shifts cannot go on
	// without it: across a restart (or kill -9) its segments must wait in
	// the kernel, dropped for want of a listener on the queue, never
	// passed unshifted. Once shifted, its element moves to a table of its
	// own that outlives ftpgate (see keptTable); everything else stays
	// in the owned table and goes with the process.
	Packet            bool
	Queue             uint16
	TranslatedTimeout time.Duration

	// KernelShifts (with Packet, on a kernel with the NFQUEUE glue and a
	// registered nat.HelperStub): the kernel shifts the sequence numbers
	// of IPv4 connections after a rewrite, recorded from the queue
	// verdict in the connection's seqadj extension. New IPv4 control
	// connections get the stub helper before NAT
	// (kernelShiftHelperRules), which is what gives a translated one that
	// extension; only the segments that can change the stream (data,
	// SYN, FIN, RST) of an established translated IPv4 connection are
	// queued, after conntrack (kernelShiftQueueRules); nothing of theirs
	// needs to outlive ftpgate, since the kernel keeps the shift. IPv6
	// ones are queued and shifted by ftpgate as without KernelShifts, as
	// are connections a previous ftpgate shifted itself (the kept table).
	KernelShifts bool
	// HelperStub is the stub's name (nat.HelperStub), with KernelShifts.
	HelperStub string
}

// The NAT chains' priorities. The data connection maps come just before
// the admin's NAT (dstnat, srcnat): the first NAT chain that binds a
// connection wins, and ftpgate's elements are exact. The proxy chain
// comes just after destination NAT, so that the socket lookups see the
// translated address the proxy's sockets have; the detect chain just
// after source NAT, so that conntrack knows both translations.
const (
	DNATChainPriority   = -101
	SNATChainPriority   = 99
	ProxyChainPriority  = -99
	DetectChainPriority = 101
	// The packet path's queue chains (packetQueueRules): the client's
	// segments after defragmentation and raw, before conntrack; the
	// server's after source NAT and the detect chain.
	FromClientQueuePriority = -250
	FromServerQueuePriority = 102
	ReplyCheckPriority      = -150
	// With KernelShifts: the stub helper after conntrack and before
	// destination NAT (a connection needs its helper when its NAT is set
	// up), and the client's segments queued after conntrack (so that the
	// verdict finds the connection) and before destination NAT (so that
	// they still show the server as the client addressed it).
	HelperChainPriority           = -160
	FromClientKernelQueuePriority = -150
)

// natFromClientKernelChain queues, with KernelShifts, the client's IPv4
// segments (kernelShiftQueueRules); natFromClientChain then has the
// IPv6 ones, which ftpgate shifts.
const natFromClientKernelChain = "queue_translated_ftp_control_from_client_kernel_shifts"

// The chains of the control proxy, whose rules name the control ports.
const (
	natProxyChain      = "proxy_ftp_control"
	natDetectChain     = "detect_translated_ftp_control"
	natFromClientChain = "queue_translated_ftp_control_from_client"
	natFromServerChain = "queue_translated_ftp_control_from_server"
	natReplyCheckChain = "check_translated_ftp_control_replies"
	natHelperChain     = "assign_ftp_control_helper"
	// natHelperObject is the owned table's ct helper object of the stub.
	natHelperObject = "ftpgate_seqadj"
)

// natRules map the first packet of an announced data connection:
//
//	meta nfproto ipv4 tcp flags & (syn | ack) == syn dnat ip to ip saddr . ip daddr . tcp dport map @ftp_data_dnat_v4
//	meta nfproto ipv6 tcp flags & (syn | ack) == syn dnat ip6 to ip6 saddr . ip6 daddr . tcp dport map @ftp_data_dnat_v6
//
// (snat ... map @ftp_data_snat_v4 for SNAT.) A NAT chain sees only the
// first packet of a connection, so the rest of a gateway's traffic costs
// nothing here; a lookup that finds nothing leaves the binding to the
// admin's NAT rules.
func natRules(snat bool) func(ruleParams, *nftables.Chain) []*nftables.Rule {
	return func(p ruleParams, chain *nftables.Chain) []*nftables.Rule {
		if snat {
			return mapRules(p, chain, p.nat.maps.snat, func(fam, _ uint32) *expr.NAT {
				return &expr.NAT{Type: expr.NATTypeSourceNAT, Family: fam, RegAddrMin: 1}
			})
		}
		return mapRules(p, chain, p.nat.maps.dnat, func(fam, alen uint32) *expr.NAT {
			return &expr.NAT{Type: expr.NATTypeDestNAT, Family: fam, RegAddrMin: 1, RegProtoMin: 1 + alen/4 + 8 - 1}
		})
	}
}

// mapRules translate the first packet of a connection by what a map
// holds for it, one rule per family:
//
//	meta nfproto ipv4 tcp flags & (syn | ack) == syn dnat ip to ip saddr . ip daddr . tcp dport map @MAP_v4
func mapRules(p ruleParams, chain *nftables.Chain, maps setPair, nat func(fam, alen uint32) *expr.NAT) []*nftables.Rule {
	var out []*nftables.Rule
	for _, v6 := range []bool{false, true} {
		m, alen, fam := maps.of(v6), uint32(4), uint32(unix.NFPROTO_IPV4)
		if v6 {
			alen, fam = 16, unix.NFPROTO_IPV6
		}
		out = append(out, &nftables.Rule{Table: p.table, Chain: chain, Exprs: slices.Concat(
			tcp(), synOnly(), nfproto(v6), addrPair(v6), []expr.Any{
				&expr.Payload{DestRegister: keyReg + 2*alen/4, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Lookup{SourceRegister: keyReg, SetName: m.Name, SetID: m.ID, DestRegister: 1, IsDestRegSet: true},
				nat(fam, alen),
			})})
	}
	return out
}

// scopedDNATRules map an FTPS data connection through a port forward to
// the server of its session's scoped range:
//
//	meta nfproto ipv4 tcp flags & (syn | ack) == syn dnat ip to ip saddr . ip daddr . tcp dport map @ftps_dnat_v4
//	meta nfproto ipv6 tcp flags & (syn | ack) == syn dnat ip6 to ip6 saddr . ip6 daddr . tcp dport map @ftps_dnat_v6
func scopedDNATRules(p ruleParams, chain *nftables.Chain) []*nftables.Rule {
	return mapRules(p, chain, p.scoped.dnat, func(fam, _ uint32) *expr.NAT {
		return &expr.NAT{Type: expr.NATTypeDestNAT, Family: fam, RegAddrMin: 1}
	})
}

// proxyRules send translated control connections to the control proxy:
//
//	meta nfproto ipv4 tcp flags & (syn | ack) == syn \
//	  ct original ip saddr . ct original proto-src . ct original ip daddr . ct original proto-dst @ftp_control_to_proxy_v4 \
//	  tproxy ip to 127.0.0.1:PROXYPORT meta mark set meta mark | ROUTEMARK accept
//	(ipv6: tproxy ip6 to [::1]:PROXYPORT)
//	tcp dport PORT socket transparent 1 meta mark set meta mark | ROUTEMARK accept
//	tcp sport PORT socket transparent 1 meta mark set meta mark | ROUTEMARK accept
//
// The last two find the proxy's own connections: the client's, by its
// translated destination, and the proxy's to the server, whose replies
// conntrack has already translated back to the client's address. The
// mark routes them to the local host (nat.ProxyRoutes).
func proxyRules(p ruleParams, chain *nftables.Chain) []*nftables.Rule {
	rule := func(note string, exprs ...[]expr.Any) *nftables.Rule {
		return &nftables.Rule{Table: p.table, Chain: chain, UserData: comment(note), Exprs: slices.Concat(exprs...)}
	}
	var out []*nftables.Rule
	for _, v6 := range []bool{false, true} {
		set, addr, fam := p.nat.maps.proxyNext.of(v6), []byte{127, 0, 0, 1}, byte(unix.NFPROTO_IPV4)
		if v6 {
			addr, fam = netipLoopback6[:], unix.NFPROTO_IPV6
		}
		out = append(out, rule("translated FTP control connection: to ftpgate's control proxy",
			tcp(), nfproto(v6), synOnly(), ctOriginalTuple(v6), []expr.Any{
				&expr.Lookup{SourceRegister: keyReg, SetName: set.Name, SetID: set.ID},
				&expr.Immediate{Register: 1, Data: addr},
				&expr.Immediate{Register: 2, Data: binary.BigEndian.AppendUint16(nil, p.nat.cfg.ProxyPort)},
				&expr.TProxy{Family: fam, TableFamily: byte(nftables.TableFamilyINet), RegAddr: 1, RegPort: 2},
			}, markSet(p.nat.cfg.RouteMark), []expr.Any{accept}))
	}
	for _, port := range p.nat.cfg.Ports {
		for _, off := range []uint32{2, 0} {
			out = append(out, rule("a connection of ftpgate's control proxy: deliver it locally",
				tcp(), portIs(off, port), []expr.Any{
					&expr.Socket{Key: expr.SocketKeyTransparent, Register: 1},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{1}},
				}, markSet(p.nat.cfg.RouteMark), []expr.Any{accept}))
		}
	}
	return out
}

var netipLoopback6 = [16]byte{15: 1}

// detectRules find new control connections the admin's rules translated:
//
//	meta mark & SOCKETMARK == SOCKETMARK return
//	meta nfproto ipv4 tcp dport PORT tcp flags & (syn | ack) == syn ct state new ct status & (snat | dnat) != 0 \
//	  add @ftp_control_to_proxy_v4 { ct original ip saddr . ct original proto-src . ct original ip daddr . ct original proto-dst } \
//	  counter drop
//
// In the packet path nothing is dropped: the SYN goes on, and the
// connection's tuple goes into ftp_control_translated_v4/v6, whose
// segments are queued from then on (packetQueueRules):
//
//	meta nfproto ipv4 tcp dport PORT tcp flags & (syn | ack) == syn ct state new ct status & (snat | dnat) != 0 \
//	  add @ftp_control_translated_v4 { ct original ip saddr . ... timeout T } counter
func detectRules(p ruleParams, chain *nftables.Chain) []*nftables.Rule {
	// The chain's own table: in the packet path, the table of its own
	// that outlives ftpgate (see NATConfig).
	rule := func(note string, exprs ...[]expr.Any) *nftables.Rule {
		return &nftables.Rule{Table: chain.Table, Chain: chain, UserData: comment(note), Exprs: slices.Concat(exprs...)}
	}
	var out []*nftables.Rule
	packet := p.nat.cfg.Packet
	if !packet {
		sm := p.nat.cfg.SocketMark
		out = append(out, rule("ftpgate's control proxy's own connection",
			markIs(&expr.Meta{Key: expr.MetaKeyMARK, Register: 1}, sm, sm, expr.CmpOpEq), []expr.Any{ret}))
	}
	const ctStatusNAT = 0x10 | 0x20 // IPS_SRC_NAT | IPS_DST_NAT
	for _, v6 := range []bool{false, true} {
		set := p.nat.maps.control().of(v6)
		note, last := "new FTP control connection the admin's NAT translated: its next SYN goes to ftpgate's control proxy",
			[]expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}
		add := &expr.Dynset{SrcRegKey: keyReg, SetName: set.Name, SetID: set.ID, Operation: uint32(unix.NFT_DYNSET_OP_ADD)}
		if packet {
			// A minute until its segments come (they refresh it to
			// TranslatedTimeout): a SYN nobody answers leaves nothing
			// for long.
			note, last = "new FTP control connection the admin's NAT translated: ftpgate rewrites and shifts its segments", []expr.Any{&expr.Counter{}}
			add.Timeout = detectTimeout
		}
		for _, port := range p.nat.cfg.Ports {
			out = append(out, rule(note,
				tcp(), nfproto(v6), portIs(2, port), synOnly(), ctState(expr.CtStateBitNEW, expr.CmpOpNeq), []expr.Any{
					&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
					&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: ne32(ctStatusNAT), Xor: ne32(0)},
					&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ne32(0)},
				}, ctOriginalTuple(v6), []expr.Any{add}, last))
		}
	}
	return out
}

// detectTimeout is how long a translated control connection's element
// waits for the connection's first queued segment.
const detectTimeout = time.Minute

// replyCheckRules drop a reply-direction segment of a translated control
// connection whose source could not have come in where it did (after
// conntrack, so that the connection's original tuple is known):
//
//	meta nfproto ipv4 ct direction reply ct original ip saddr . ct original proto-src . ct original ip daddr . ct original proto-dst \
//	  @ftp_control_translated_v4 fib saddr . iif oif 0 counter drop
//
// The server's segments are read after source NAT, where the interface
// they came in on is no longer known: a host elsewhere that forged the
// server's address would otherwise have its "227" read.
func replyCheckRules(sets setPair) func(ruleParams, *nftables.Chain) []*nftables.Rule {
	return func(p ruleParams, chain *nftables.Chain) []*nftables.Rule { return replyChecks(sets, chain) }
}

func replyChecks(sets setPair, chain *nftables.Chain) []*nftables.Rule {
	var out []*nftables.Rule
	for _, v6 := range []bool{false, true} {
		set := sets.of(v6)
		out = append(out, &nftables.Rule{Table: chain.Table, Chain: chain,
			UserData: comment("a reply of a translated FTP control connection from a source that cannot come from there"),
			Exprs: slices.Concat(tcp(), nfproto(v6), []expr.Any{
				&expr.Ct{Register: 1, Key: expr.CtKeyDIRECTION},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{1}},
			}, ctOriginalTuple(v6), []expr.Any{
				&expr.Lookup{SourceRegister: keyReg, SetName: set.Name, SetID: set.ID},
			}, reversePathFails(), []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}})})
	}
	return out
}

// packetQueueRules queue every segment of a translated control
// connection to the packet path, refreshing its element:
//
//	from the client (prerouting, before conntrack):
//	fib saddr . iif oif missing return
//	meta nfproto ipv4 ip saddr . tcp sport . ip daddr . tcp dport @ftp_control_translated_v4 \
//	  update @ftp_control_translated_v4 { ip saddr . tcp sport . ip daddr . tcp dport timeout T } queue num Q
//	from the server (postrouting, after source NAT):
//	meta nfproto ipv4 ct direction reply ip daddr . tcp dport . ip saddr . tcp sport @ftp_control_translated_v4 \
//	  update @ftp_control_translated_v4 { ip daddr . tcp dport . ip saddr . tcp sport timeout T } queue num Q
//
// Where they are queued decides what conntrack sees (nat.PacketConn):
// the client's segments already shifted, the server's not yet, so both
// as the server sees them. Without bypass: with no ftpgate listening,
// a segment that went on unshifted would break the connection; dropped,
// it is sent again.
func packetQueueRules(fromServer bool, sets setPair, queue expr.Any) func(ruleParams, *nftables.Chain) []*nftables.Rule {
	return familiesQueueRules(fromServer, sets, queue, []bool{false, true})
}

// familiesQueueRules are packetQueueRules for the families in v6s
// (false: IPv4).
func familiesQueueRules(fromServer bool, sets setPair, queue expr.Any, v6s []bool) func(ruleParams, *nftables.Chain) []*nftables.Rule {
	return func(p ruleParams, chain *nftables.Chain) []*nftables.Rule {
		var out []*nftables.Rule
		if !fromServer {
			// Before conntrack, nothing has checked the source: one that
			// could not have come in where it did is left to the
			// kernel's own checks, unread.
			out = append(out, &nftables.Rule{Table: chain.Table, Chain: chain, UserData: comment("a source that cannot come from there: not ftpgate's"),
				Exprs: append(reversePathFails(), ret)})
		}
		for _, v6 := range v6s {
			set := sets.of(v6)
			exprs := slices.Concat(tcp(), nfproto(v6))
			if fromServer {
				exprs = append(exprs, &expr.Ct{Register: 1, Key: expr.CtKeyDIRECTION},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{1}}) // IP_CT_DIR_REPLY
			}
			exprs = append(exprs, tupleOf(v6, fromServer)...)
			exprs = append(exprs,
				&expr.Lookup{SourceRegister: keyReg, SetName: set.Name, SetID: set.ID},
				&expr.Dynset{SrcRegKey: keyReg, SetName: set.Name, SetID: set.ID, Operation: uint32(unix.NFT_DYNSET_OP_UPDATE), Timeout: p.nat.cfg.TranslatedTimeout},
				queue)
			note := "a segment from the client of a translated FTP control connection: to ftpgate's packet path"
			if fromServer {
				note = "a segment from the server of a translated FTP control connection: to ftpgate's packet path"
			}
			out = append(out, &nftables.Rule{Table: chain.Table, Chain: chain, UserData: comment(note), Exprs: exprs})
		}
		return out
	}
}

// helperObject is the owned table's ct helper object of the stub helper
// (nat.HelperStub), for TCP over IPv4 and IPv6:
//
//	nft add ct helper inet ftpgate ftpgate_seqadj { type "ftpgate" protocol tcp; }
func helperObject(t *nftables.Table, stub string) *nftables.NamedObj {
	return &nftables.NamedObj{Table: t, Name: natHelperObject, Type: nftables.ObjTypeCtHelper,
		Obj: &expr.CtHelper{Name: stub, L4Proto: unix.IPPROTO_TCP}}
}

// kernelShiftHelperRules give every new IPv4 control connection the
// stub helper, before NAT (IPv6 stays with ftpgate's shift:
// kernelShiftQueueRules):
//
//	meta nfproto ipv4 tcp dport PORT tcp flags & (syn | ack) == syn ct state new ct helper set "ftpgate_seqadj"
//
// Every one, since which are translated is decided later, by the
// admin's NAT rules; on one that is not, the helper is inert (it
// accepts every packet and expects nothing), and the kernel gives the
// seqadj extension only to one whose NAT changes its tuple.
func kernelShiftHelperRules(p ruleParams, chain *nftables.Chain) []*nftables.Rule {
	var out []*nftables.Rule
	for _, port := range p.nat.cfg.Ports {
		out = append(out, &nftables.Rule{Table: chain.Table, Chain: chain,
			UserData: comment("new FTP control connection: the helper stub, which gives it sequence number adjustment if the admin's NAT translates it"),
			Exprs: slices.Concat(tcp(), nfproto(false), portIs(2, port), synOnly(), ctState(expr.CtStateBitNEW, expr.CmpOpNeq), []expr.Any{
				&expr.Objref{Type: int(nftables.ObjTypeCtHelper), Name: natHelperObject},
			})})
	}
	return out
}

// kernelShiftQueueRules queue, with KernelShifts, the segments of an
// established translated control connection that can change its stream,
// refreshing its element:
//
//	from the client (prerouting, after conntrack, before destination NAT):
//	fib saddr . iif oif missing return
//	meta nfproto ipv4 ct state established tcp flags & (syn | fin | rst) != 0 ip saddr . tcp sport . ip daddr . tcp dport @ftp_control_translated_v4 \
//	  update @ftp_control_translated_v4 { ... timeout T } queue num Q
//	meta nfproto ipv4 ct state established @ih,0,8 & 0x0 == 0x0 ip saddr . ... @ftp_control_translated_v4 update ... queue num Q
//	from the server (postrouting, after source NAT): the same with ct direction reply, the tuple reversed.
//
// A bare acknowledgement goes on unqueued: the kernel shifts it. Both
// are read before the kernel applies the shift (at confirmation, the
// last hook), in the sender's own numbers, as the verdict's seqadj
// needs. What conntrack finds invalid (a checksum, a sequence number
// outside the window) has no connection and is not queued.
//
// IPv4 only: the kernel records a verdict's change of length at the
// sequence number it reads with the IPv4 header length
// (nf_ct_tcp_seqadj_set), so IPv6 stays with ftpgate's own shift
// (packetQueueRules; nat's TestKernelShiftIPv6Fails).
func kernelShiftQueueRules(fromServer bool, sets setPair, queue expr.Any) func(ruleParams, *nftables.Chain) []*nftables.Rule {
	return func(p ruleParams, chain *nftables.Chain) []*nftables.Rule {
		var out []*nftables.Rule
		if !fromServer {
			out = append(out, &nftables.Rule{Table: chain.Table, Chain: chain, UserData: comment("a source that cannot come from there: not ftpgate's"),
				Exprs: append(reversePathFails(), ret)})
		}
		for _, v6 := range []bool{false} {
			set := sets.of(v6)
			for _, what := range [][]expr.Any{tcpFlags(0x01|0x02|0x04, 0, expr.CmpOpNeq), carriesData()} {
				exprs := slices.Concat(tcp(), nfproto(v6), ctState(expr.CtStateBitESTABLISHED, expr.CmpOpNeq))
				if fromServer {
					exprs = append(exprs, &expr.Ct{Register: 1, Key: expr.CtKeyDIRECTION},
						&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{1}}) // IP_CT_DIR_REPLY
				}
				exprs = slices.Concat(exprs, what, tupleOf(v6, fromServer), []expr.Any{
					&expr.Lookup{SourceRegister: keyReg, SetName: set.Name, SetID: set.ID},
					&expr.Dynset{SrcRegKey: keyReg, SetName: set.Name, SetID: set.ID, Operation: uint32(unix.NFT_DYNSET_OP_UPDATE), Timeout: p.nat.cfg.TranslatedTimeout},
					queue})
				note := "a segment from the client of a translated FTP control connection: to ftpgate's packet path (the kernel shifts)"
				if fromServer {
					note = "a segment from the server of a translated FTP control connection: to ftpgate's packet path (the kernel shifts)"
				}
				out = append(out, &nftables.Rule{Table: chain.Table, Chain: chain, UserData: comment(note), Exprs: exprs})
			}
		}
		return out
	}
}

// tupleOf loads a segment's connection's original tuple into keyReg
// onwards, from a client's segment (source first) or a server's
// (reversed):
//
//	ip saddr . tcp sport . ip daddr . tcp dport
//	ip daddr . tcp dport . ip saddr . tcp sport
func tupleOf(v6, reversed bool) []expr.Any {
	src, dst, alen := uint32(12), uint32(16), uint32(4)
	if v6 {
		src, dst, alen = 8, 24, 16
	}
	sport, dport := uint32(0), uint32(2)
	if reversed {
		src, dst, sport, dport = dst, src, dport, sport
	}
	r := uint32(keyReg)
	return []expr.Any{
		&expr.Payload{DestRegister: r, Base: expr.PayloadBaseNetworkHeader, Offset: src, Len: alen},
		&expr.Payload{DestRegister: r + alen/4, Base: expr.PayloadBaseTransportHeader, Offset: sport, Len: 2},
		&expr.Payload{DestRegister: r + alen/4 + 1, Base: expr.PayloadBaseNetworkHeader, Offset: dst, Len: alen},
		&expr.Payload{DestRegister: r + 2*alen/4 + 1, Base: expr.PayloadBaseTransportHeader, Offset: dport, Len: 2},
	}
}

// translatedSkipExprs (the forward copy chain, in the packet path):
//
//	ct status & (snat | dnat) != 0 return
//
// The packet path reads a translated control connection's segments; a
// copy of them would make a second session of it.
func translatedSkipExprs() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: ne32(0x10 | 0x20), Xor: ne32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ne32(0)},
		ret,
	}
}

// proxyAdmitExprs (input chain):
//
//	meta mark & ROUTEMARK == ROUTEMARK ct state new ct mark set ct mark & ~MASK | MARK accept
//
// A control connection handed to the proxy arrives on the input hook,
// where the admin's rules would not expect it: the documented line for
// ftpgate's mark lets it in. Its first SYN had already passed all of the
// admin's forward rules (see NATConfig), and only ftpgate's proxy chain
// sets this packet mark.
func proxyAdmitExprs(p ruleParams) []expr.Any {
	rm := p.nat.cfg.RouteMark
	return slices.Concat(
		markIs(&expr.Meta{Key: expr.MetaKeyMARK, Register: 1}, rm, rm, expr.CmpOpEq),
		ctState(expr.CtStateBitNEW, expr.CmpOpNeq),
		[]expr.Any{
			&expr.Ct{Register: 1, Key: expr.CtKeyMARK},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: ne32(^p.mask), Xor: ne32(p.mark)},
			&expr.Ct{Register: 1, Key: expr.CtKeyMARK, SourceRegister: true},
			accept,
		})
}

// proxiedSkipExprs (copy chains): meta mark & (ROUTEMARK | SOCKETMARK) != 0 return
//
// The proxy's connections are read by the proxy, not copied.
func proxiedSkipExprs(p ruleParams) []expr.Any {
	bits := p.nat.cfg.RouteMark | p.nat.cfg.SocketMark
	return slices.Concat(markIs(&expr.Meta{Key: expr.MetaKeyMARK, Register: 1}, bits, 0, expr.CmpOpNeq), []expr.Any{ret})
}

// natParams are the NAT parts of ruleParams.
type natParams struct {
	cfg  NATConfig
	maps *natMaps
}
