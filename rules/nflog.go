package rules

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// From linux/netfilter/nfnetlink_log.h; golang.org/x/sys lacks them.
const (
	nfulnlMsgPacket    = 0
	nfulnlMsgConfig    = 1
	nfulaPayload       = 9
	nfulaCfgCmd        = 1
	nfulaCfgMode       = 2
	nfulaCfgQThresh    = 5
	nfulnlCfgCmdBind   = 1
	nfulnlCfgCmdUnbind = 2
	nfulnlCopyPacket   = 2
	consumedSnaplen    = 128 // IPv6 header + TCP ports fit with room to spare
)

// DefaultLogGroup is the NFLOG group on which the consuming rules report
// the first packet of each admitted data connection.
const DefaultLogGroup = 2121

// ConsumedListener receives, through NFLOG, the first packet of every data
// connection that consumed a pinhole, so the daemon can say when and why
// a pinhole closed. It only reports: the kernel has already removed the
// element when the report arrives.
type ConsumedListener struct {
	conn  *netlink.Conn
	group uint16
}

// ListenConsumed binds the NFLOG group in the given network namespace (0:
// the current one). Only one process per namespace can bind a group.
func ListenConsumed(group uint16, netns int) (*ConsumedListener, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netns})
	if err != nil {
		return nil, fmt.Errorf("%w: opening nflog socket: %v", ErrNoNftables, err)
	}
	l := &ConsumedListener{conn: conn, group: group}
	cmd := []netlink.Attribute{{Type: nfulaCfgCmd, Data: []byte{nfulnlCfgCmdBind}}}
	if err := l.config(cmd); err != nil {
		conn.Close()
		return nil, fmt.Errorf("binding NFLOG group %d (is it used by another program? see --nflog-group): %w", group, err)
	}
	mode := make([]byte, 6)
	binary.BigEndian.PutUint32(mode, consumedSnaplen)
	mode[4] = nfulnlCopyPacket
	qthresh := binary.BigEndian.AppendUint32(nil, 1) // deliver each packet at once, not in batches
	if err := l.config([]netlink.Attribute{{Type: nfulaCfgMode, Data: mode}, {Type: nfulaCfgQThresh, Data: qthresh}}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("configuring NFLOG group %d: %w", group, err)
	}
	return l, nil
}

func (l *ConsumedListener) config(attrs []netlink.Attribute) error {
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return err
	}
	hdr := []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, byte(l.group >> 8), byte(l.group)}
	_, err = l.conn.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_ULOG<<8 | nfulnlMsgConfig),
			Flags: netlink.Request | netlink.Acknowledge,
		},
		Data: append(hdr, data...),
	})
	return err
}

// Run sends the pinhole each reported packet consumed to out until ctx
// ends or the socket fails.
func (l *ConsumedListener) Run(ctx context.Context, out chan<- Pinhole) error {
	stop := context.AfterFunc(ctx, func() { l.conn.Close() })
	defer stop()
	for {
		msgs, err := l.conn.Receive()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("receiving NFLOG: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Type != netlink.HeaderType(unix.NFNL_SUBSYS_ULOG<<8|nfulnlMsgPacket) || len(m.Data) < 4 {
				continue
			}
			p, ok := consumedPinhole(m.Data[4:])
			if !ok {
				continue
			}
			select {
			case out <- p:
			case <-ctx.Done():
				return nil
			}
		}
	}
}

// consumedPinhole finds the payload attribute and reads the pinhole key
// (source, destination, TCP destination port) from its IP header.
func consumedPinhole(attrs []byte) (Pinhole, bool) {
	ad, err := netlink.NewAttributeDecoder(attrs)
	if err != nil {
		return Pinhole{}, false
	}
	for ad.Next() {
		if ad.Type() == nfulaPayload {
			return pinholeFromIP(ad.Bytes())
		}
	}
	return Pinhole{}, false
}

// pinholeFromIP reads the key of the pinhole a TCP SYN matched.
func pinholeFromIP(b []byte) (Pinhole, bool) {
	if len(b) < 1 {
		return Pinhole{}, false
	}
	switch b[0] >> 4 {
	case 4:
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 || len(b) < ihl+4 || b[9] != unix.IPPROTO_TCP {
			return Pinhole{}, false
		}
		return Pinhole{
			Peer: netip.AddrFrom4([4]byte(b[12:16])),
			Addr: netip.AddrFrom4([4]byte(b[16:20])),
			Port: binary.BigEndian.Uint16(b[ihl+2:]),
		}, true
	case 6:
		if len(b) < 44 || b[6] != unix.IPPROTO_TCP {
			return Pinhole{}, false
		}
		return Pinhole{
			Peer: netip.AddrFrom16([16]byte(b[8:24])),
			Addr: netip.AddrFrom16([16]byte(b[24:40])),
			Port: binary.BigEndian.Uint16(b[42:]),
		}, true
	}
	return Pinhole{}, false
}

// Close unbinds the group and closes the socket.
func (l *ConsumedListener) Close() error {
	_ = l.config([]netlink.Attribute{{Type: nfulaCfgCmd, Data: []byte{nfulnlCfgCmdUnbind}}})
	_ = l.conn.Close() // Run may have closed it already
	return nil
}
