package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestCommandLineMistakes: every misuse gets one line saying what is
// wrong and where help is, exit status 2, and no help dump.
func TestCommandLineMistakes(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--bogus"}, "ftpgate run: unknown flag: --bogus"},
		{[]string{"run", "--pinhole-timeout", "5"}, `invalid argument "5" for "--pinhole-timeout" flag: must be a duration like "30s"`},
		{[]string{"run", "extra"}, `ftpgate run: no arguments expected, got "extra"`},
		{[]string{"run", "--table", "a/b"}, `ftpgate run: --table "a/b": want a letter`},
		{[]string{"run", "--table", "ftpgate_probe_1"}, `ftpgate run: --table "ftpgate_probe_1": names starting with ftpgate_probe_ are the kernel probe's`},
		{[]string{"run", "--mark", "0x3/0x1"}, "value must be non-zero and within the mask"},
		{[]string{"analyze"}, "ftpgate analyze: no capture file given"},
		{[]string{"analyze", "a.pcap", "b.pcap"}, "a.pcap"},
		{[]string{"analyze", "a.pcap", "--format", "html"}, `--format "html": want json or text`},
	} {
		var stdout, stderr bytes.Buffer
		code := run(tt.args, &stdout, &stderr)
		got := stderr.String()
		if code == 0 || !strings.Contains(got, tt.want) {
			t.Errorf("%v: exit %d, stderr %q; want an error with %q", tt.args, code, got, tt.want)
		}
		if strings.Contains(got, "Usage:") || strings.Count(got, "\n") > 2 {
			t.Errorf("%v: a help dump instead of one line:\n%s", tt.args, got)
		}
	}
}

// TestHelp: --help prints the command's help on standard output and
// exits 0, flags included.
func TestHelp(t *testing.T) {
	for _, cmd := range []string{"run", "analyze"} {
		var stdout, stderr bytes.Buffer
		if code := run([]string{cmd, "--help"}, &stdout, &stderr); code != 0 {
			t.Errorf("%s --help: exit %d", cmd, code)
		}
		if !strings.HasPrefix(stdout.String(), "Usage: ftpgate "+cmd) || !strings.Contains(stdout.String(), "--log-level") {
			t.Errorf("%s --help printed:\n%s", cmd, stdout.String())
		}
	}
}

// TestMarkMaskDefaultsToValue: --mark without a mask claims only the
// value's bits.
func TestMarkMaskDefaultsToValue(t *testing.T) {
	var m mark
	if err := m.Set("0x5"); err != nil {
		t.Fatal(err)
	}
	if m.value != 5 || m.mask != 5 {
		t.Errorf("--mark 0x5 gives %s, want 0x00000005/0x00000005", m.String())
	}
}
