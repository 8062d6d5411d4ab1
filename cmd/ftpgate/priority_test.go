package main

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// threadNices reads the nice value of every thread (field 19 of stat).
func threadNices(t *testing.T) map[string]int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, e := range entries {
		b, err := os.ReadFile("/proc/self/task/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// The command name may hold spaces; fields count from after it.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
		n, err := strconv.Atoi(f[16])
		if err != nil {
			t.Fatalf("thread %s: nice field %q", e.Name(), f[16])
		}
		out[e.Name()] = n
	}
	return out
}

func TestSetNiceReachesEveryThread(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: raising the priority needs root (CAP_SYS_NICE)")
	}
	before := threadNices(t)
	if len(before) < 2 {
		t.Fatalf("want several runtime threads, have %v", before)
	}
	defer func() {
		if err := setNice(0); err != nil {
			t.Errorf("restoring nice 0: %v", err)
		}
	}()
	if err := setNice(-7); err != nil {
		t.Fatal(err)
	}
	for tid, n := range threadNices(t) {
		if n != -7 {
			t.Errorf("thread %s: nice %d, want -7", tid, n)
		}
	}
}
