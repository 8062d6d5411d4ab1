package nat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/ftpgate/ftpgate/internal/nlattr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// ctnetlink attribute numbers (linux/netfilter/nfnetlink_conntrack.h).
const (
	ctaTupleOrig  = 1
	ctaTupleReply = 2
	ctaStatus     = 3
	ipsHelper     = 1 << 13 // IPS_HELPER: a helper was attached explicitly (nft ct helper)
	ctaTupleIP    = 1
	ctaTupleProto = 2
	ctaIPv4Src    = 1
	ctaIPv4Dst    = 2
	ctaIPv6Src    = 3
	ctaIPv6Dst    = 4
	ctaProtoNum   = 1
	ctaProtoSrc   = 2
	ctaProtoDst   = 3
	ipctnlMsgGet  = 1
)

// errNoConntrack is returned when the kernel has no entry for a tuple.
var errNoConntrack = errors.New("no conntrack entry")

// conntrackReply asks the kernel's conntrack for the TCP connection
// whose original direction goes from src to dst, and returns the
// destination of its reply direction: where the other end sends to,
// which differs from src when the connection is source-NATed.
//
//	conntrack -G -p tcp -s SRC --sport SPORT -d DST --dport DPORT
func conntrackReply(conn *netlink.Conn, src, dst netip.AddrPort) (netip.AddrPort, error) {
	_, reply, _, err := conntrackReplyTuple(conn, src, dst)
	return reply, err
}

// conntrackReplyTuple is the reply direction of the TCP connection whose
// original direction goes from src to dst: from (the server after
// destination NAT) and to (the client after source NAT); and the
// connection's status bits.
func conntrackReplyTuple(conn *netlink.Conn, src, dst netip.AddrPort) (from, to netip.AddrPort, status uint32, err error) {
	req, err := conntrackGetRequest(src, dst)
	if err != nil {
		return from, to, 0, err
	}
	msgs, err := conn.Execute(req)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return from, to, 0, fmt.Errorf("%s -> %s: %w", src, dst, errNoConntrack)
		}
		return from, to, 0, fmt.Errorf("asking conntrack for %s -> %s: %w", src, dst, err)
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		nlattr.Walk(m.Data[4:], func(typ uint16, v []byte) {
			switch {
			case typ == ctaTupleReply:
				from, to = parseTuple(v)
			case typ == ctaStatus && len(v) == 4:
				status = binary.BigEndian.Uint32(v)
			}
		})
		if to.IsValid() && from.IsValid() {
			return from, to, status, nil
		}
	}
	return from, to, 0, fmt.Errorf("conntrack's answer for %s -> %s has no reply tuple", src, dst)
}

// Conntrack asks the kernel's conntrack what the admin's NAT rules did to
// a connection.
type Conntrack struct{ conn *netlink.Conn }

// OpenConntrack opens ctnetlink in the network namespace netns (0: this
// one).
func OpenConntrack(netns int) (*Conntrack, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netns})
	if err != nil {
		return nil, fmt.Errorf("opening ctnetlink: %w", err)
	}
	return &Conntrack{conn: conn}, nil
}

// Translation is the translation of the TCP connection from client to
// serverSeen (its original direction, as the client sent it).
func (c *Conntrack) Translation(client, serverSeen netip.AddrPort) (Translation, error) {
	from, to, status, err := conntrackReplyTuple(c.conn, client, serverSeen)
	if err != nil {
		return Translation{}, err
	}
	return Translation{Client: client, ServerSeen: serverSeen, Server: from, ClientSeen: to, HelperAttached: status&ipsHelper != 0}, nil
}

// Close closes the socket.
func (c *Conntrack) Close() error { return c.conn.Close() }

// conntrackGetRequest builds IPCTNL_MSG_CT_GET for a TCP tuple.
func conntrackGetRequest(src, dst netip.AddrPort) (netlink.Message, error) {
	if src.Addr().Is4() != dst.Addr().Is4() {
		return netlink.Message{}, fmt.Errorf("tuple %s -> %s mixes address families", src, dst)
	}
	family, srcAttr, dstAttr := uint8(unix.AF_INET), uint16(ctaIPv4Src), uint16(ctaIPv4Dst)
	if src.Addr().Is6() {
		family, srcAttr, dstAttr = unix.AF_INET6, ctaIPv6Src, ctaIPv6Dst
	}
	ae := netlink.NewAttributeEncoder()
	ae.Nested(ctaTupleOrig, func(ae *netlink.AttributeEncoder) error {
		ae.Nested(ctaTupleIP, func(ae *netlink.AttributeEncoder) error {
			ae.Bytes(srcAttr, src.Addr().AsSlice())
			ae.Bytes(dstAttr, dst.Addr().AsSlice())
			return nil
		})
		ae.Nested(ctaTupleProto, func(ae *netlink.AttributeEncoder) error {
			ae.Uint8(ctaProtoNum, unix.IPPROTO_TCP)
			ae.Bytes(ctaProtoSrc, binary.BigEndian.AppendUint16(nil, src.Port()))
			ae.Bytes(ctaProtoDst, binary.BigEndian.AppendUint16(nil, dst.Port()))
			return nil
		})
		return nil
	})
	attrs, err := ae.Encode()
	if err != nil {
		return netlink.Message{}, err
	}
	return netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_CTNETLINK<<8 | ipctnlMsgGet),
			Flags: netlink.Request | netlink.Acknowledge, // the answer comes flagged multipart; the ack ends it
		},
		Data: append([]byte{family, unix.NFNETLINK_V0, 0, 0}, attrs...),
	}, nil
}

// parseTuple reads a CTA_TUPLE_* nest.
func parseTuple(b []byte) (src, dst netip.AddrPort) {
	var sa, da netip.Addr
	var sp, dp uint16
	nlattr.Walk(b, func(typ uint16, v []byte) {
		switch typ {
		case ctaTupleIP:
			nlattr.Walk(v, func(typ uint16, v []byte) {
				switch typ {
				case ctaIPv4Src, ctaIPv6Src:
					sa, _ = netip.AddrFromSlice(v)
				case ctaIPv4Dst, ctaIPv6Dst:
					da, _ = netip.AddrFromSlice(v)
				}
			})
		case ctaTupleProto:
			nlattr.Walk(v, func(typ uint16, v []byte) {
				if len(v) < 2 {
					return
				}
				switch typ {
				case ctaProtoSrc:
					sp = binary.BigEndian.Uint16(v)
				case ctaProtoDst:
					dp = binary.BigEndian.Uint16(v)
				}
			})
		}
	})
	if sa.IsValid() {
		src = netip.AddrPortFrom(sa, sp)
	}
	if da.IsValid() {
		dst = netip.AddrPortFrom(da, dp)
	}
	return src, dst
}
