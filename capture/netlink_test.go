package capture

import (
	"encoding/binary"
	"encoding/hex"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// TestVerdictBytes checks the verdicts NFQUEUE is sent, byte for byte:
// a repeat with the admit mark for one packet, a batch accept for the
// rest.
func TestVerdictBytes(t *testing.T) {
	q := &QueueSource{num: 2121, Mark: 0x01000000, MarkMask: 0x01000000}
	got := q.appendVerdict(nil, false, 7, true, 0x01000000)
	got = q.appendVerdict(got, true, 9, false, 0)
	le := func(v uint32) string { return hex.EncodeToString(binary.NativeEndian.AppendUint32(nil, v)) }
	le16 := func(v uint16) string { return hex.EncodeToString(binary.NativeEndian.AppendUint16(nil, v)) }
	want := le(40) + le16(unix.NFNL_SUBSYS_QUEUE<<8|1) + le16(unix.NLM_F_REQUEST) + le(0) + le(0) +
		"00000849" + // AF_UNSPEC, NFNETLINK_V0, queue 2121 (big endian)
		le16(12) + le16(2) + "00000004" + "00000007" + // verdict header: NF_REPEAT, id 7
		le16(8) + le16(3) + "01000000" + // packet mark
		le(32) + le16(unix.NFNL_SUBSYS_QUEUE<<8|3) + le16(unix.NLM_F_REQUEST) + le(0) + le(0) +
		"00000849" +
		le16(12) + le16(2) + "00000001" + "00000009" // batch: NF_ACCEPT up to id 9
	if h := hex.EncodeToString(got); h != want {
		t.Errorf("verdicts\n got %s\nwant %s", h, want)
	}
}

// TestVerdictBytesReplaceDrop checks a verdict that replaces the packet
// (NF_ACCEPT with NFQA_PAYLOAD, padded to four bytes) and a drop.
func TestVerdictBytesReplaceDrop(t *testing.T) {
	q := &QueueSource{num: 2121}
	got := q.appendVerdictOf(nil, false, 7, nfAccept, 0, []byte{0x45, 1, 2, 3, 4}, false)
	got = q.appendVerdictOf(got, false, 8, nfDrop, 0, nil, false)
	le := func(v uint32) string { return hex.EncodeToString(binary.NativeEndian.AppendUint32(nil, v)) }
	le16 := func(v uint16) string { return hex.EncodeToString(binary.NativeEndian.AppendUint16(nil, v)) }
	want := le(44) + le16(unix.NFNL_SUBSYS_QUEUE<<8|1) + le16(unix.NLM_F_REQUEST) + le(0) + le(0) +
		"00000849" +
		le16(12) + le16(2) + "00000001" + "00000007" + // NF_ACCEPT, id 7
		le16(9) + le16(10) + "4501020304" + "000000" + // NFQA_PAYLOAD, padded
		le(32) + le16(unix.NFNL_SUBSYS_QUEUE<<8|1) + le16(unix.NLM_F_REQUEST) + le(0) + le(0) +
		"00000849" +
		le16(12) + le16(2) + "00000000" + "00000008" // NF_DROP, id 8
	if h := hex.EncodeToString(got); h != want {
		t.Errorf("verdicts\n got %s\nwant %s", h, want)
	}
}

// TestVerdictBytesReplaceWithConntrack checks the verdict that lets a
// kernel with the glue shift sequence numbers: the replaced packet, then
// an NFQA_CT (nfqnl_recv_verdict parses the conntrack only when the
// attribute is there) that takes the helper away.
func TestVerdictBytesReplaceWithConntrack(t *testing.T) {
	q := &QueueSource{num: 2121}
	q.held, q.ids, q.marks = []Packet{{Replace: []byte{0x45, 1, 2, 3, 4}, KernelShifts: true}}, []uint32{7}, []uint32{0}
	got := q.verdicts()
	le := func(v uint32) string { return hex.EncodeToString(binary.NativeEndian.AppendUint32(nil, v)) }
	le16 := func(v uint16) string { return hex.EncodeToString(binary.NativeEndian.AppendUint16(nil, v)) }
	want := le(60) + le16(unix.NFNL_SUBSYS_QUEUE<<8|1) + le16(unix.NLM_F_REQUEST) + le(0) + le(0) +
		"00000849" +
		le16(12) + le16(2) + "00000001" + "00000007" + // NF_ACCEPT, id 7
		le16(9) + le16(10) + "4501020304" + "000000" + // NFQA_PAYLOAD, padded
		le16(16) + le16(unix.NLA_F_NESTED|11) + // NFQA_CT
		le16(12) + le16(unix.NLA_F_NESTED|5) + // CTA_HELP
		le16(5) + le16(1) + "00000000" // CTA_HELP_NAME "", padded
	if h := hex.EncodeToString(got); h != want {
		t.Errorf("verdict\n got %s\nwant %s", h, want)
	}
}

// TestVerdictsClearHelpers: with ClearHelpers every packet gets a verdict
// of its own carrying the NFQA_CT, a held SYN admitted (a repeat with
// the mark) as one let go; a drop needs none.
func TestVerdictsClearHelpers(t *testing.T) {
	q := &QueueSource{num: 2121, Mark: 0x01000000, MarkMask: 0x01000000, ClearHelpers: true}
	q.held = []Packet{{Verdict: Admit}, {}, {Verdict: Drop}}
	q.ids, q.marks = []uint32{7, 8, 9}, []uint32{0, 0, 0}
	got := hex.EncodeToString(q.verdicts())
	le := func(v uint32) string { return hex.EncodeToString(binary.NativeEndian.AppendUint32(nil, v)) }
	le16 := func(v uint16) string { return hex.EncodeToString(binary.NativeEndian.AppendUint16(nil, v)) }
	hdr := func(n uint32) string {
		return le(n) + le16(unix.NFNL_SUBSYS_QUEUE<<8|1) + le16(unix.NLM_F_REQUEST) + le(0) + le(0) + "00000849"
	}
	ct := le16(16) + le16(unix.NLA_F_NESTED|11) + le16(12) + le16(unix.NLA_F_NESTED|5) + le16(5) + le16(1) + "00000000"
	want := hdr(56) + le16(12) + le16(2) + "00000004" + "00000007" + le16(8) + le16(3) + "01000000" + ct + // NF_REPEAT, the mark
		hdr(48) + le16(12) + le16(2) + "00000001" + "00000008" + ct + // NF_ACCEPT
		hdr(32) + le16(12) + le16(2) + "00000000" + "00000009" // NF_DROP
	if got != want {
		t.Errorf("verdicts\n got %s\nwant %s", got, want)
	}
}

// TestParseLogMessages reads a datagram of two NFLOG records: prefixes
// and payloads come out as the kernel wrote them.
func TestParseLogMessages(t *testing.T) {
	record := func(prefix string, payload []byte) []byte {
		attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
			{Type: nfulaPrefix, Data: append([]byte(prefix), 0)},
			{Type: nfulaPayload, Data: payload},
		})
		if err != nil {
			t.Fatal(err)
		}
		data := append([]byte{unix.AF_INET, 0, 0x08, 0x49}, attrs...)
		m := netlink.Message{
			Header: netlink.Header{Length: uint32(unix.NLMSG_HDRLEN + len(data)), Type: netlink.HeaderType(unix.NFNL_SUBSYS_ULOG<<8 | nfulnlMsgPacket)},
			Data:   data,
		}
		b, err := m.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	dgram := append(record("", []byte{0x45, 1, 2}), record("ftpgate: pinhole used", []byte{0x45, 3})...)
	var prefixes []string
	var payloads []string
	n := parseLogMessages(dgram, func(prefix, payload []byte) {
		prefixes = append(prefixes, string(prefix))
		payloads = append(payloads, hex.EncodeToString(payload))
	})
	if n != 2 || prefixes[0] != "" || prefixes[1] != "ftpgate: pinhole used" || payloads[0] != "450102" || payloads[1] != "4503" {
		t.Errorf("n %d, prefixes %q, payloads %q", n, prefixes, payloads)
	}
	// A truncated datagram yields what is whole, and no panic.
	if n := parseLogMessages(dgram[:len(dgram)-3], func(_, _ []byte) {}); n != 1 {
		t.Errorf("truncated datagram: %d records, want 1", n)
	}
}
