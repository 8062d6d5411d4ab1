package rules

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/ftpgate/ftpgate/internal/netnstest"
	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// TestCheckRuleset checks which chains of an admin's ruleset the check
// names. It needs no root: the kernel's replies to the check's requests
// (nft -f of each ruleset in a throwaway namespace, then the dumps of
// its chains and rules) were recorded in testdata/check-ruleset and are
// replayed. As root, -update records them again.
func TestCheckRuleset(t *testing.T) {
	for _, tt := range []struct {
		name, ruleset string
		want          []string // chains named, "" for none
	}{
		{"line present", `table inet filter {
			chain forward { type filter hook forward priority filter; policy drop;
				ct state established,related accept
				ct mark & 0x01000000 == 0x01000000 accept; }
			chain input { type filter hook input priority filter; policy drop;
				iif lo accept
				ct mark & 0x01000000 == 0x01000000 accept; }
		}`, nil},
		{"line missing", `table inet filter {
			chain forward { type filter hook forward priority filter; policy drop;
				ct state established,related accept
				tcp dport 21 accept; }
			chain input { type filter hook input priority filter; policy accept; }
		}`, []string{"inet filter forward"}},
		{"line after an unconditional drop", `table ip fw {
			chain forwarding { type filter hook forward priority 0; policy accept;
				ct state established accept
				counter drop
				ct mark & 0x01000000 == 0x01000000 accept; }
		}`, []string{"ip fw forwarding"}},
		{"line in a jumped-to chain", `table inet filter {
			chain allow { ct mark & 0x01000000 == 0x01000000 accept; }
			chain forward { type filter hook forward priority filter; policy drop;
				jump allow; }
		}`, nil},
		{"another mark", `table inet filter {
			chain forward { type filter hook forward priority filter; policy drop;
				ct mark & 0x00000010 == 0x00000010 accept; }
		}`, []string{"inet filter forward"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			conn := cannedConn(t, tt.name, tt.ruleset)
			problems, err := checkRuleset(conn, DefaultTable, 0x01000000, 0x01000000)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range problems {
				got = append(got, p.Family+" "+p.Table+" "+p.Chain)
				if !strings.Contains(p.String(), "has no rule accepting the ftpgate mark") {
					t.Errorf("message %q", p.String())
				}
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Errorf("named %v, want %v", got, tt.want)
			}
		})
	}
}

// cannedConn returns a connection that answers each request with the
// kernel's recorded replies in testdata/check-ruleset/NAME.replies. With
// -update (root only) it loads ruleset into a throwaway namespace and
// records the replies there as they are asked for.
func cannedConn(t *testing.T, name, ruleset string) *nftables.Conn {
	t.Helper()
	path := filepath.Join("testdata", "check-ruleset", regexp.MustCompile(`\W+`).ReplaceAllString(name, "-")+".replies")
	var dial func([]netlink.Message) ([]netlink.Message, error)
	if *update {
		dial = recordReplies(t, path, ruleset)
	} else {
		dial = replayReplies(t, path)
	}
	conn, err := nftables.New(nftables.WithTestDial(dial))
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

// A replies file holds, per request, a line "> TYPE DATA" and a line
// "< TYPE FLAGS DATA" per reply, all in hex; # starts a comment.
func requestKey(m netlink.Message) string {
	return fmt.Sprintf("%04x %s", uint16(m.Header.Type), hex.EncodeToString(m.Data))
}

// recordReplies passes each request to the kernel of a namespace that
// holds ruleset, and writes the requests and replies to path when the
// test ends.
func recordReplies(t *testing.T, path, ruleset string) func([]netlink.Message) ([]netlink.Message, error) {
	ns := netnstest.New(t)
	netnstest.Nft(t, ns, "-f", writeTemp(t, ruleset))
	kernel, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: int(ns)})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString("# The kernel's replies to the requests of checkRuleset, for:\n")
	for _, l := range strings.Split(ruleset, "\n") {
		b.WriteString("#   " + strings.TrimSpace(l) + "\n")
	}
	b.WriteString("# go test ./rules -run TestCheckRuleset -update (as root) records them again.\n")
	t.Cleanup(func() {
		kernel.Close()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Error(err)
		}
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Error(err)
		}
	})
	return func(req []netlink.Message) ([]netlink.Message, error) {
		if len(req) == 0 {
			return nil, io.EOF // the reader polls for more: there is none
		}
		if len(req) != 1 {
			return nil, fmt.Errorf("recording: %d messages in one request, want 1", len(req))
		}
		m := req[0]
		m.Header.Sequence, m.Header.PID = 0, 0 // the kernel socket's own
		replies, err := kernel.Execute(m)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&b, "> %s\n", requestKey(req[0]))
		for _, m := range replies {
			fmt.Fprintf(&b, "< %04x %04x %s\n", uint16(m.Header.Type), uint16(m.Header.Flags), hex.EncodeToString(m.Data))
		}
		return dumpReply(req[0], replies), nil
	}
}

// replayReplies answers each request with the replies recorded for it.
func replayReplies(t *testing.T, path string) func([]netlink.Message) ([]netlink.Message, error) {
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("%v (run as root with -update to record it)", err)
	}
	defer f.Close()
	canned := map[string][]netlink.Message{}
	var key string
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		l := sc.Text()
		switch {
		case strings.HasPrefix(l, "> "):
			key = l[2:]
			canned[key] = nil
		case strings.HasPrefix(l, "< "):
			var typ, flags uint16
			var data string
			if _, err := fmt.Sscanf(l[2:], "%x %x %s", &typ, &flags, &data); err != nil {
				t.Fatalf("%s: %q: %v", path, l, err)
			}
			b, err := hex.DecodeString(data)
			if err != nil {
				t.Fatalf("%s: %q: %v", path, l, err)
			}
			canned[key] = append(canned[key], netlink.Message{
				Header: netlink.Header{Type: netlink.HeaderType(typ), Flags: netlink.HeaderFlags(flags)}, Data: b})
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return func(req []netlink.Message) ([]netlink.Message, error) {
		if len(req) == 0 {
			return nil, io.EOF // the reader polls for more: there is none
		}
		if len(req) != 1 {
			return nil, fmt.Errorf("replaying: %d messages in one request, want 1", len(req))
		}
		replies, ok := canned[requestKey(req[0])]
		if !ok {
			return nil, fmt.Errorf("replaying %s: no recorded reply to request %s", path, requestKey(req[0]))
		}
		return dumpReply(req[0], replies), nil
	}
}

// dumpReply addresses replies to req and ends them as a dump ends.
func dumpReply(req netlink.Message, replies []netlink.Message) []netlink.Message {
	out := make([]netlink.Message, 0, len(replies)+1)
	for _, m := range replies {
		m.Header.Sequence, m.Header.PID = req.Header.Sequence, req.Header.PID
		m.Header.Flags |= netlink.Multi
		out = append(out, m)
	}
	return append(out, netlink.Message{Header: netlink.Header{
		Type: netlink.Done, Flags: netlink.Multi, Sequence: req.Header.Sequence, PID: req.Header.PID}})
}

func writeTemp(t *testing.T, content string) string {
	t.Helper()
	p := t.TempDir() + "/ruleset.nft"
	if err := os.WriteFile(p, []byte(content+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
