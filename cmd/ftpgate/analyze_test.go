package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/gopacket/gopacket/pcapgo"
)

type record struct {
	TS      string `json:"ts"`
	Session string `json:"session"`
	Command string `json:"command"`
	Passive bool   `json:"passive"`
	OrigH   string `json:"orig_h"`
	RespH   string `json:"resp_h"`
	RespP   int    `json:"resp_p"`
	Verdict string `json:"verdict"`
	Reason  string `json:"reason"`
	Client  string `json:"client"`
	Server  string `json:"server"`
	Record  string `json:"record"`
}

func analyze(t *testing.T, file string, extra ...string) []record {
	t.Helper()
	var stdout, stderr bytes.Buffer
	args := append([]string{"analyze"}, extra...)
	if code := run(append(args, file), &stdout, &stderr); code != 0 {
		t.Fatalf("ftpgate analyze %s: exit %d\n%s", file, code, stderr.String())
	}
	var out []record
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		var r record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("output line %q: %v", sc.Text(), err)
		}
		if r.Record != "" {
			continue // a session record (encrypted), not a channel
		}
		out = append(out, r)
	}
	return out
}

func (r record) key() string {
	p := "F"
	if r.Passive {
		p = "T"
	}
	return strings.Join([]string{p, r.OrigH, r.RespH, strconv.Itoa(r.RespP), r.Command}, "\t")
}

// TestAnalyzeSharedCaptures runs every capture of ../shared/ftp-captures
// through `ftpgate analyze` and compares the announced channels with
// EXPECTED.tsv. Channels whose announced host is not the announcing
// side's control address (bounce, rewritten hosts, IPv6 EPRT on an IPv4
// session) must be refused; all others in these captures are accepted
// by the server and must open.
func TestAnalyzeSharedCaptures(t *testing.T) {
	dir := filepath.Join("..", "..", "..", "shared", "ftp-captures")
	f, err := os.Open(filepath.Join(dir, "EXPECTED.tsv"))
	if err != nil {
		t.Skipf("skipping: shared captures not present (%v)", err)
	}
	defer f.Close()
	want := map[string]map[string][]string{} // file -> key -> verdicts
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		col := strings.Split(sc.Text(), "\t")
		if len(col) < 7 {
			t.Fatalf("EXPECTED.tsv line %q: want 7 columns", sc.Text())
		}
		file := col[0]
		if want[file] == nil {
			want[file] = map[string][]string{}
		}
		if col[5] == "NONE" {
			continue
		}
		verdict := "open"
		if strings.Contains(col[6], "!=") || strings.Contains(col[6], "over IPv4") {
			verdict = "refuse"
		}
		k := strings.Join(col[1:6], "\t")
		want[file][k] = append(want[file][k], verdict)
	}
	if len(want) == 0 {
		t.Fatal("EXPECTED.tsv lists no capture")
	}
	files := make([]string, 0, len(want))
	for f := range want {
		files = append(files, f)
	}
	sort.Strings(files)
	for _, file := range files {
		t.Run(file, func(t *testing.T) {
			got := map[string][]string{}
			for _, r := range analyze(t, filepath.Join(dir, file)) {
				got[r.key()] = append(got[r.key()], r.Verdict)
				if r.Verdict == "refuse" && r.Reason == "" {
					t.Errorf("refusal without a reason: %+v", r)
				}
			}
			for k, verdicts := range want[file] {
				if len(got[k]) != len(verdicts) {
					t.Errorf("channel %q: got %d, want %d", k, len(got[k]), len(verdicts))
					continue
				}
				sort.Strings(verdicts)
				sort.Strings(got[k])
				if strings.Join(got[k], ",") != strings.Join(verdicts, ",") {
					t.Errorf("channel %q: verdicts %v, want %v", k, got[k], verdicts)
				}
			}
			for k := range got {
				if _, ok := want[file][k]; !ok {
					t.Errorf("unexpected channel %q: %v", k, got[k])
				}
			}
		})
	}
}

// TestAnalyzeLabCaptures runs the captures recorded on the project's own
// lab (see test/lab.sh) and checks every field of every channel.
func TestAnalyzeLabCaptures(t *testing.T) {
	v4 := []string{
		"PASV T 192.0.2.10 198.51.100.20 40687 open [192.0.2.10]:* 198.51.100.20:21",
		"PORT F 198.51.100.20 192.0.2.10 34877 open [192.0.2.10]:* 198.51.100.20:21",
	}
	v6 := []string{
		"EPRT F 2001:db8:2::20 2001:db8:1::10 42457 open [2001:db8:1::10]:* [2001:db8:2::20]:21",
		"EPSV T 2001:db8:1::10 2001:db8:2::20 40662 open [2001:db8:1::10]:* [2001:db8:2::20]:21",
	}
	tests := []struct {
		file string
		want []string
	}{
		{"lab-v4-pasv-port-client-side.pcap", v4},
		{"lab-v4-pasv-port-server-side.pcap", v4},
		{"lab-v6-eprt-epsv.pcap", v6},
		// Linux cooked v2 from -i any: every packet twice, once per interface.
		{"lab-v6-eprt-epsv-any-cooked.pcap", v6},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			var got []string
			sessions := map[string]bool{}
			for _, r := range analyze(t, filepath.Join("testdata", tt.file)) {
				p := "F"
				if r.Passive {
					p = "T"
				}
				client := r.Client[:strings.LastIndexByte(r.Client, ':')]
				if !strings.HasPrefix(client, "[") {
					client = "[" + client + "]"
				}
				got = append(got, strings.Join([]string{r.Command, p, r.OrigH, r.RespH, strconv.Itoa(r.RespP), r.Verdict, client + ":*", r.Server}, " "))
				if r.TS == "" || r.Session == "" || r.Reason == "" {
					t.Errorf("record with empty fields: %+v", r)
				}
				sessions[r.Session] = true
			}
			sort.Strings(got)
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("channels:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			if len(sessions) != 2 {
				t.Errorf("%d session ids, want 2 (one per control connection)", len(sessions))
			}
			// The same file gives the same session ids on every run.
			again := analyze(t, filepath.Join("testdata", tt.file))
			for _, r := range again {
				if !sessions[r.Session] {
					t.Errorf("session id %s not stable across runs", r.Session)
				}
			}
		})
	}
}

// TestAnalyzePcapng converts a lab capture to pcapng and expects the same
// channels from it.
func TestAnalyzePcapng(t *testing.T) {
	in, err := os.Open(filepath.Join("testdata", "lab-v4-pasv-port-client-side.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	r, err := pcapgo.NewReader(in)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "lab.pcapng")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	w, err := pcapgo.NewNgWriter(f, r.LinkType())
	if err != nil {
		t.Fatal(err)
	}
	for {
		data, ci, err := r.ReadPacketData()
		if err != nil {
			break
		}
		if err := w.WritePacket(ci, data); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	got := analyze(t, out)
	want := analyze(t, filepath.Join("testdata", "lab-v4-pasv-port-client-side.pcap"))
	if len(got) != 2 || len(got) != len(want) {
		t.Fatalf("pcapng gave %d channels, pcap %d; want 2 each", len(got), len(want))
	}
	for i := range got {
		if got[i].key() != want[i].key() || got[i].Verdict != want[i].Verdict {
			t.Errorf("pcapng channel %d = %+v, pcap %+v", i, got[i], want[i])
		}
	}
}

func TestAnalyzeTextFormat(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"analyze", "--format", "text", filepath.Join("testdata", "lab-v4-pasv-port-client-side.pcap")}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{"CLIENT", "SERVER", "COMMAND", "PASV", "passive (client connects)", "198.51.100.20:40687", "PORT",
		"active (server connects)", "192.0.2.10:34877", "would open", "192.0.2.10:37332  198.51.100.20:21"} {
		if !strings.Contains(out, want) {
			t.Errorf("text output lacks %q:\n%s", want, out)
		}
	}
	// An encrypted session is a row of its own.
	stdout.Reset()
	if code := run([]string{"analyze", "--format", "text", filepath.Join("testdata", "crafted-auth-tls.pcap")}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if !regexp.MustCompile(`AUTH +encrypted +- +- +hidden +the control channel is encrypted \(explicit FTPS\)`).MatchString(stdout.String()) {
		t.Errorf("no row for the encrypted session:\n%s", stdout.String())
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{}, {"bogus"}, {"analyze"}, {"analyze", "--format", "xml", "x.pcap"}, {"run", "--mark", "0x2/0x1"}, {"run", "extra"}, {"run", "--commit-delay", "-1s"}} {
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code == 0 {
			t.Errorf("ftpgate %v: exit 0, want an error", args)
		} else if stderr.Len() == 0 {
			t.Errorf("ftpgate %v: no message on stderr", args)
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"analyze", "does-not-exist.pcap"}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "does-not-exist.pcap") {
		t.Errorf("missing file: exit %d, stderr %q", code, stderr.String())
	}
}

// TestAnalyzeNATSuspected runs captures of the NAT lab (test/natlab.sh,
// no helper on the gateway) taken on both sides of the gateway: a LAN
// client behind masquerade sending PORT and EPRT to a server on the
// internet, and an internet client getting a 227 from the DMZ server
// behind the port forward. On the internet side every announcement
// carries an address that is not its announcer's control address, and
// says NAT is suspected; on the LAN side the addresses match and nothing
// does.
func TestAnalyzeNATSuspected(t *testing.T) {
	wan := analyze(t, filepath.Join("testdata", "natlab-wan-side-no-helper.pcap"))
	if len(wan) != 4 {
		t.Fatalf("%d channels on the internet side, want 4: %+v", len(wan), wan)
	}
	for _, r := range wan {
		if r.Verdict != "refuse" || !strings.HasPrefix(r.Reason, "NAT suspected: announced address ") {
			t.Errorf("%s %s: %s %q, want a refusal that says NAT is suspected", r.Command, r.RespH, r.Verdict, r.Reason)
		}
	}
	lan := analyze(t, filepath.Join("testdata", "natlab-lan-side-no-helper.pcap"))
	if len(lan) != 3 {
		t.Fatalf("%d channels on the LAN side, want 3: %+v", len(lan), lan)
	}
	for _, r := range lan {
		if strings.Contains(r.Reason, "NAT suspected") {
			t.Errorf("%s on the LAN side: %q", r.Command, r.Reason)
		}
	}
}
