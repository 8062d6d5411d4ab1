package nat

import (
	"encoding/hex"
	"testing"

	"golang.org/x/sys/unix"
)

// TestHelperStubRequest pins the registration byte for byte, as
// nfnetlink_cthelper.c's nfnl_cthelper_new parses it: the name, the
// tuple (l3 number big-endian, l4 a byte), the policy nest the kernel
// requires, the status disabled and no expectations allowed.
func TestHelperStubRequest(t *testing.T) {
	m, err := helperStubRequest(unix.AF_INET6)
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Type != 9<<8|0 {
		t.Errorf("type %#x, want NFNL_SUBSYS_CTHELPER<<8 | NFNL_MSG_CTHELPER_NEW", m.Header.Type)
	}
	want := "00000000" + // nfgenmsg
		"0c000100" + hex.EncodeToString([]byte("ftpgate\x00")) + // NFCTH_NAME
		"14000280" + "06000100000a0000" + "0500020006000000" + // NFCTH_TUPLE: l3 AF_INET6 (be16), l4 TCP
		"0800030000000000" + // NFCTH_QUEUE_NUM 0
		"2c000480" + "0800010000000001" + // NFCTH_POLICY: one class
		"20000280" + "0c000100" + hex.EncodeToString([]byte("ftpgate\x00")) + "0800020000000000" + "0800030000000000" +
		"0800050000000000" + // NFCTH_PRIV_DATA_LEN 0
		"0800060000000000" // NFCTH_STATUS disabled
	if got := hex.EncodeToString(m.Data); got != want {
		t.Errorf("request\n got %s\nwant %s", got, want)
	}
}
