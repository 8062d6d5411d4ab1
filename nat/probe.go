package nat

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// ProbeConntrack checks that ctnetlink answers in netns (0: the current
// one): the proxy asks it for each control connection's NAT. It asks for
// a connection nobody has (documentation addresses), which a kernel with
// ctnetlink answers "no such entry".
//
//	conntrack -G -p tcp -s 192.0.2.1 --sport 1 -d 192.0.2.2 --dport 2
func ProbeConntrack(netns int) error {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netns})
	if err != nil {
		return fmt.Errorf("opening ctnetlink socket: %w", err)
	}
	defer conn.Close()
	_, err = conntrackReply(conn, netip.MustParseAddrPort("192.0.2.1:1"), netip.MustParseAddrPort("192.0.2.2:2"))
	if errors.Is(err, errNoConntrack) {
		return nil
	}
	if err == nil {
		return nil
	}
	return fmt.Errorf("ctnetlink (nf_conntrack_netlink) does not answer: %w", err)
}
