package rules

import (
	"bytes"
	"encoding/hex"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The tests in this file need no root: they build what ftpgate sends to
// the kernel on a google/nftables connection with a test dialer and
// compare every netlink message, byte for byte, with testdata/*.golden.
// A change to a rule, a set or a commit shows as a failing test naming the
// message; when the change is meant, `go test ./rules -run Golden -update`
// writes the files again, and the diff of testdata says what changed:
// beside each message's bytes, a line "## nft ..." says what it does in
// nft's words (nftText), so that the diff reads as a change of rules.

var update = flag.Bool("update", false, "rewrite testdata/*.golden from what the code builds now")

// recorder is an Nftables on a test connection that records what it sends.
type recorder struct {
	*Nftables
	msgs []netlink.Message
}

func newRecorder(t *testing.T) *recorder {
	t.Helper()
	r := &recorder{}
	conn, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		r.msgs = append(r.msgs, req...)
		return nil, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	r.Nftables = newNftables(testRecorderConfig, conn, &nftables.Table{Name: DefaultTable, Family: nftables.TableFamilyINet}, nil)
	return r
}

var testRecorderConfig = Config{Table: DefaultTable, Mark: 0x01000000, MarkMask: 0x01000000, MaxPinholes: 65536, MaxPeers: 139264, LogGroup: DefaultLogGroup}

// reconfigure rebuilds the recorder's parts for cfg, on the same connection.
func (r *recorder) reconfigure(cfg Config) {
	r.Nftables = newNftables(cfg, r.conn, r.table, nil)
}

func (r *recorder) flush(t *testing.T) []netlink.Message {
	t.Helper()
	r.msgs = nil
	if err := r.conn.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	return r.msgs
}

// msgName names a netlink message of the nf_tables subsystem.
func msgName(m netlink.Message) string {
	switch uint16(m.Header.Type) {
	case unix.NFNL_MSG_BATCH_BEGIN:
		return "batch begin"
	case unix.NFNL_MSG_BATCH_END:
		return "batch end"
	}
	names := map[uint16]string{
		unix.NFT_MSG_NEWTABLE: "new table", unix.NFT_MSG_NEWCHAIN: "new chain", unix.NFT_MSG_NEWRULE: "new rule",
		unix.NFT_MSG_NEWSET: "new set", unix.NFT_MSG_NEWSETELEM: "new set elements", unix.NFT_MSG_DELSETELEM: "delete set elements",
		unix.NFT_MSG_DELCHAIN: "delete chain", unix.NFT_MSG_DELRULE: "delete rule",
	}
	if n, ok := names[uint16(m.Header.Type)&0xff]; ok {
		return n
	}
	return fmt.Sprintf("type %#x", uint16(m.Header.Type))
}

// dump writes messages as the golden files hold them: per message, its
// name and flags, what it says in nft's words (nftText: a reviewer's
// aid, derived from the bytes), then its payload (without the netlink header, whose
// length, sequence number and port id vary) in hex, 32 bytes a line.
func dump(msgs []netlink.Message) string {
	var b strings.Builder
	for i, m := range msgs {
		fmt.Fprintf(&b, "# %d %s flags %#x\n", i, msgName(m), uint16(m.Header.Flags))
		if t := nftText(m); t != "" {
			b.WriteString("## nft " + t + "\n")
		}
		for data := m.Data; len(data) > 0; {
			n := min(32, len(data))
			b.WriteString(hex.EncodeToString(data[:n]) + "\n")
			data = data[n:]
		}
	}
	return b.String()
}

// golden compares what was sent with testdata/NAME.golden.
func golden(t *testing.T, name string, msgs []netlink.Message) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	got := dump(msgs)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to write it)", err)
	}
	if got == string(want) {
		return
	}
	// Name the first message that differs and show both.
	gm, wm := splitMessages(got), splitMessages(string(want))
	for i := range max(len(gm), len(wm)) {
		var g, w string
		if i < len(gm) {
			g = gm[i]
		}
		if i < len(wm) {
			w = wm[i]
		}
		if g != w {
			t.Fatalf("%s: message %d differs from the golden bytes (go test ./rules -run Golden -update if that is meant)\ngot:\n%swant:\n%s", path, i, g, w)
		}
	}
}

// splitMessages cuts a dump into its messages, each with its name line.
func splitMessages(d string) []string {
	var out []string
	for _, l := range strings.SplitAfter(d, "\n") {
		if strings.HasPrefix(l, "# ") || len(out) == 0 {
			out = append(out, "")
		}
		out[len(out)-1] += l
	}
	return out
}

func TestGoldenPinholeSets(t *testing.T) {
	msgs, err := pinholeSetsBatch(DefaultTable, 65536)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "pinhole-sets", msgs)
	// Spot checks that need no golden file: the limit is there, once per set.
	var sets int
	for _, m := range msgs {
		if bytes.Contains(m.Data, []byte("limit\x00")) {
			sets++
		}
	}
	if sets != 2 {
		t.Errorf("%d set messages carry a limit, want 2", sets)
	}
}

func TestGoldenBase(t *testing.T) {
	r := newRecorder(t)
	if err := r.queueBase(); err != nil {
		t.Fatal(err)
	}
	golden(t, "base", r.flush(t))
}

func TestGoldenInline(t *testing.T) {
	for name, queue := range map[string]func(uint16) expr.Any{"inline-nft-queue": nftQueue, "inline-xt-nfqueue": xtQueue} {
		t.Run(name, func(t *testing.T) {
			r := newRecorder(t)
			r.chains.queueInline([]uint16{21, 2121}, DefaultLogGroup, queue(2121))
			golden(t, name, r.flush(t))
		})
	}
}

func TestGoldenCommit(t *testing.T) {
	r := newRecorder(t)
	p4 := Pinhole{Peer: netip.MustParseAddr("192.0.2.10"), Addr: netip.MustParseAddr("198.51.100.20"), Port: 40001}
	p6 := Pinhole{Peer: netip.MustParseAddr("2001:db8::10"), Addr: netip.MustParseAddr("2001:db8:1::20"), Port: 40002}
	peers := Peers{Client: p4.Peer, Server: p4.Addr}
	for _, err := range []error{r.AddPinhole(p4, time.Minute), r.AddPinhole(p6, time.Minute), r.DelPinhole(p4), r.AddPeers(peers), r.DelPeers(peers)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	r.msgs = nil
	if err := r.Commit(); err != nil {
		t.Fatal(err)
	}
	golden(t, "commit", r.msgs)
}

func TestGoldenNAT(t *testing.T) {
	r := newRecorder(t)
	nat := testNAT
	cfg := testRecorderConfig
	cfg.NAT = &nat
	r.reconfigure(cfg)
	if err := r.queueBase(); err != nil {
		t.Fatal(err)
	}
	r.chains.queueInline(nat.Ports, DefaultLogGroup, xtQueue(2121))
	golden(t, "nat", r.flush(t))

	d := Mapping{Peer: netip.MustParseAddr("203.0.113.10"), Addr: netip.MustParseAddr("203.0.113.1"), Port: 61001,
		ToAddr: netip.MustParseAddr("198.51.100.2"), ToPort: 40001}
	s := Mapping{SNAT: true, Peer: netip.MustParseAddr("2001:db8:2::2"), Addr: netip.MustParseAddr("2001:db8:3::10"), Port: 50000,
		ToAddr: netip.MustParseAddr("2001:db8:3::1")}
	for _, err := range []error{r.AddMapping(d, time.Minute), r.AddMapping(s, time.Minute), r.DelMapping(d)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	r.msgs = nil
	if err := r.Commit(); err != nil {
		t.Fatal(err)
	}
	golden(t, "nat-commit", r.msgs)
}

func TestGoldenInlineInterfaces(t *testing.T) {
	r := newRecorder(t)
	cfg := testRecorderConfig
	cfg.Interfaces = []string{"lan0", "wan0"}
	r.reconfigure(cfg)
	r.chains.queueInline([]uint16{21}, DefaultLogGroup, xtQueue(2121))
	golden(t, "inline-interfaces", r.flush(t))
}
