package netnstest

import (
	"bufio"
	"compress/gzip"
	"io"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// KernelConfig returns the running kernel's build configuration
// (CONFIG_X → "y", "m" or a value), from $FTPGATE_KERNEL_CONFIG,
// /proc/config.gz or /boot/config-RELEASE, so that a test can say what
// the kernel should be able to do. Skips when none is found.
func KernelConfig(t testing.TB) map[string]string {
	t.Helper()
	var u unix.Utsname
	_ = unix.Uname(&u)
	release := unix.ByteSliceToString(u.Release[:])
	for _, path := range []string{os.Getenv("FTPGATE_KERNEL_CONFIG"), "/proc/config.gz", "/boot/config-" + release} {
		if path == "" {
			continue
		}
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		defer f.Close()
		var r io.Reader = f
		if strings.HasSuffix(path, ".gz") {
			if r, err = gzip.NewReader(f); err != nil {
				t.Fatalf("reading %s: %v", path, err)
			}
		}
		cfg := map[string]string{}
		s := bufio.NewScanner(r)
		for s.Scan() {
			if k, v, ok := strings.Cut(s.Text(), "="); ok && strings.HasPrefix(k, "CONFIG_") {
				cfg[k] = v
			}
		}
		if err := s.Err(); err != nil {
			t.Fatalf("reading %s: %v", path, err)
		}
		return cfg
	}
	t.Skipf("no configuration of kernel %s found (FTPGATE_KERNEL_CONFIG, /proc/config.gz, /boot/config-%s)", release, release)
	return nil
}
