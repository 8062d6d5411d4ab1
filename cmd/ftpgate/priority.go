package main

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// setNice gives every thread of the process the nice value n. Linux keeps
// the value per thread, and the Go runtime has started several before
// main runs; threads started later inherit it from the one that creates
// them.
func setNice(n int) error {
	entries, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return fmt.Errorf("listing threads: %w", err)
	}
	for _, e := range entries {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		// A thread that ended meanwhile is no error.
		if err := unix.Setpriority(unix.PRIO_PROCESS, tid, n); err != nil && err != unix.ESRCH {
			return fmt.Errorf("setting nice %d on thread %d: %w", n, tid, err)
		}
	}
	return nil
}
