package nat

import (
	"encoding/hex"
	"net/netip"
	"testing"
)

// TestConntrackReplyParsed reads the reply tuple out of the kernel's
// answer to `conntrack -G` for a masqueraded connection, as strace showed
// it on the NAT lab: 192.0.2.2:34724 -> 203.0.113.10:21, answered from
// 203.0.113.10:21 to the gateway's 203.0.113.1:34724.
func TestConntrackReplyParsed(t *testing.T) {
	reply, _ := hex.DecodeString("1400018008000100cb00710a08000200cb0071011c0002800500010006000000060002000015000006000300" + "87a40000")
	src, dst := parseTuple(reply)
	if src != netip.MustParseAddrPort("203.0.113.10:21") || dst != netip.MustParseAddrPort("203.0.113.1:34724") {
		t.Errorf("parsed %v -> %v", src, dst)
	}
}

// TestConntrackGetRequest: the request carries the original tuple as
// conntrack(8) sends it, and asks for an ack, which is what ends the
// kernel's answer (it comes flagged multipart, with no DONE after it).
func TestConntrackGetRequest(t *testing.T) {
	m, err := conntrackGetRequest(netip.MustParseAddrPort("192.0.2.2:34724"), netip.MustParseAddrPort("203.0.113.10:21"))
	if err != nil {
		t.Fatal(err)
	}
	want := "02000000" + "34000180" + "14000180" + "08000100c0000202" + "08000200cb00710a" +
		"1c000280" + "0500010006000000" + "0600020087a40000" + "0600030000150000"
	if got := hex.EncodeToString(m.Data); got != want {
		t.Errorf("request\n got %s\nwant %s", got, want)
	}
	if m.Header.Type != 0x101 || m.Header.Flags&0x4 == 0 {
		t.Errorf("header %+v: want IPCTNL_MSG_CT_GET with NLM_F_ACK", m.Header)
	}
	if _, err := conntrackGetRequest(netip.MustParseAddrPort("192.0.2.2:1"), netip.MustParseAddrPort("[2001:db8::1]:21")); err == nil {
		t.Error("a tuple mixing families was built")
	}
}
