package main

import (
	"bytes"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
)

// TestReloadChanges: a reload takes the live keys and the [[server]]
// tables, warns of the others, and leaves the running configuration
// alone when the file does not load.
func TestReloadChanges(t *testing.T) {
	p := writeConfig(t, "min-data-port = 1024\n")
	args := []string{"--config", p, "--log-level", "warn"}
	rv := newRunVars()
	servers, ranges, err := rv.load(args, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var logged bytes.Buffer
	r := &reloader{rv: rv, args: args, servers: servers, ranges: ranges, running: flagValues(rv.fs),
		log: slog.New(slog.NewTextHandler(&logged, nil))}

	if err := os.WriteFile(p, []byte("min-data-port = 2000\nmax-sessions = 10\nlog-level = \"debug\"\n[[server]]\naddress = \"198.51.100.20\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	next, err := r.load()
	if err != nil {
		t.Fatal(err)
	}
	live := r.takeLiveChanges(next)
	// log-level stays: the command line's wins over the file's.
	if want := []string{"min-data-port=2000", "server (1 entries)"}; !slices.Equal(live, want) {
		t.Errorf("live changes %q, want %q", live, want)
	}
	if next.cfg.MinDataPort != 2000 || next.level.String() != "WARN" || r.running["min-data-port"] != "2000" || len(r.servers) != 1 {
		t.Errorf("next %+v, level %v, running %v, servers %v", next.cfg.MinDataPort, next.level, r.running["min-data-port"], r.servers)
	}
	if !strings.Contains(logged.String(), "takes effect at the next start") || !strings.Contains(logged.String(), "key=max-sessions") {
		t.Errorf("no warning for max-sessions:\n%s", logged.String())
	}
	if live := r.takeLiveChanges(next); len(live) != 0 {
		t.Errorf("the same configuration again changes %q", live)
	}

	if err := os.WriteFile(p, []byte("min-data-port = \n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := r.load(); err == nil || !strings.Contains(err.Error(), p+":1:") {
		t.Errorf("a broken file: %v", err)
	}
}
