package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReportRatios(t *testing.T) {
	file := filepath.Join(t.TempDir(), "results.jsonl")
	lines := `{"gateway":"kernel","name":"PASV v4","cpu_s":0,"peak_rss_kib":0,"result":{"wanted":100,"succeeded":100,"setup_p99_ms":2.0,"transfers_per_s":1000}}
{"gateway":"ftpgate","name":"PASV v4","cpu_s":1.5,"peak_rss_kib":20480,"result":{"wanted":100,"succeeded":99,"failed":1,"setup_p99_ms":3.0,"transfers_per_s":950,"slow":2}}
`
	if err := os.WriteFile(file, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := cmdReport([]string{file}, &out); err != nil {
		t.Fatal(err)
	}
	rows := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(rows) != 3 {
		t.Fatalf("want header and two rows:\n%s", out.String())
	}
	ftpgate := strings.Fields(rows[2])
	want := []string{"PASV", "v4", "ftpgate", "100", "99", "1"}
	for i, w := range want {
		if ftpgate[i] != w {
			t.Errorf("field %d = %q, want %q in %q", i, ftpgate[i], w, rows[2])
		}
	}
	for _, w := range []string{"1.50", "20.0", "1.50", "0.95"} { // cpu, rss MiB, p99 ratio, transfers/s ratio
		if !strings.Contains(rows[2], w) {
			t.Errorf("row lacks %s: %q", w, rows[2])
		}
	}
	if !strings.Contains(rows[2], " 2 ") {
		t.Errorf("slow count missing: %q", rows[2])
	}
}
