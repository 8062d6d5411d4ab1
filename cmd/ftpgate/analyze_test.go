package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
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
