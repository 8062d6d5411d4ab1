package nat

import (
	"encoding/binary"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// HelperStub is the name of the conntrack helper ftpgate registers for
// the kernel to shift the sequence numbers of translated control
// connections (see RegisterHelperStub).
const HelperStub = "ftpgate"

// nfnetlink_cthelper numbers (linux/netfilter/nfnetlink_cthelper.h).
const (
	nfnlSubsysCthelper   = 9
	nfnlMsgCthelperNew   = 0
	nfcthName            = 1
	nfcthTuple           = 2
	nfcthQueueNum        = 3
	nfcthPolicy          = 4
	nfcthPrivDataLen     = 5
	nfcthStatus          = 6
	nfcthTupleL3         = 1
	nfcthTupleL4         = 2
	nfcthPolicySetNum    = 1
	nfcthPolicySet       = 2
	nfcthPolicyName      = 1
	nfcthPolicyExpectMax = 2
	nfcthPolicyExpectTmo = 3
	nfctHelperDisabled   = 0
)

// RegisterHelperStub registers, for TCP over IPv4 and IPv6, a userspace
// conntrack helper named HelperStub that does nothing:
//
//	nfct add helper ftpgate inet tcp; nfct disable helper ftpgate inet tcp
//
// The kernel shifts a connection's sequence numbers after a rewrite
// that a queue verdict made (NFQA_PAYLOAD with NFQA_CT, on a kernel with
// CONFIG_NETFILTER_NETLINK_GLUE_CT) only where the connection has the
// seqadj extension, and it gives that only to a connection that has a
// helper when its NAT is set up. A disabled userspace helper is such a
// helper and nothing else: its hook accepts every packet, queues none,
// and expects nothing. ftpgate's chains assign it to new control
// connections before NAT (rules.NATConfig.KernelShifts).
//
// Helpers are global to the kernel, not per network namespace: one
// registration serves every ftpgate; registering again updates it in
// place (to disabled). It is never removed: connections that have it
// keep it until they end, and it is inert.
func RegisterHelperStub(netns int) error {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netns})
	if err != nil {
		return fmt.Errorf("registering the conntrack helper stub: opening nfnetlink: %w", err)
	}
	defer conn.Close()
	for _, family := range []uint16{unix.AF_INET, unix.AF_INET6} {
		req, err := helperStubRequest(family)
		if err != nil {
			return err
		}
		if _, err := conn.Execute(req); err != nil {
			return fmt.Errorf("registering the conntrack helper stub %q (nfnetlink_cthelper, CONFIG_NF_CT_NETLINK_HELPER): %w", HelperStub, err)
		}
	}
	return nil
}

// helperStubRequest is the NFNL_MSG_CTHELPER_NEW of the stub for one
// address family: no queue (0, never used while disabled), one
// expectation class that allows none, no private data.
func helperStubRequest(family uint16) (netlink.Message, error) {
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.String(nfcthName, HelperStub)
	ae.Nested(nfcthTuple, func(nae *netlink.AttributeEncoder) error {
		nae.Uint16(nfcthTupleL3, family)
		nae.Uint8(nfcthTupleL4, unix.IPPROTO_TCP)
		return nil
	})
	ae.Uint32(nfcthQueueNum, 0)
	ae.Nested(nfcthPolicy, func(nae *netlink.AttributeEncoder) error {
		nae.Uint32(nfcthPolicySetNum, 1)
		nae.Nested(nfcthPolicySet, func(pae *netlink.AttributeEncoder) error {
			pae.String(nfcthPolicyName, HelperStub)
			pae.Uint32(nfcthPolicyExpectMax, 0)
			pae.Uint32(nfcthPolicyExpectTmo, 0)
			return nil
		})
		return nil
	})
	ae.Uint32(nfcthPrivDataLen, 0)
	ae.Uint32(nfcthStatus, nfctHelperDisabled)
	attrs, err := ae.Encode()
	if err != nil {
		return netlink.Message{}, fmt.Errorf("encoding the conntrack helper stub: %w", err)
	}
	return netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(nfnlSubsysCthelper<<8 | nfnlMsgCthelperNew),
			Flags: netlink.Request | netlink.Acknowledge | netlink.Create,
		},
		// nfgenmsg: family (unused), version, resource id.
		Data: append([]byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0}, attrs...),
	}, nil
}
