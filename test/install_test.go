package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestMakeInstall stages `make install` in a directory and checks what
// it put there: the binary runs, the man page has every flag of run, the
// default configuration loads, and systemd accepts the unit (when
// systemd-analyze is there).
func TestMakeInstall(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("skipping: no make")
	}
	dest := t.TempDir()
	out, err := exec.Command("make", "-C", "..", "install", "DESTDIR="+dest).CombinedOutput()
	if err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	binPath := filepath.Join(dest, "usr/local/sbin/ftpgate")
	unit := filepath.Join(dest, "etc/systemd/system/ftpgate.service")
	conf := filepath.Join(dest, "etc/ftpgate/ftpgate.toml")
	man := filepath.Join(dest, "usr/local/share/man/man8/ftpgate.8")
	for _, p := range []string{binPath, unit, conf, man} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("not installed: %v", err)
		}
	}
	help, err := exec.Command(binPath, "run", "--help").Output()
	if err != nil {
		t.Fatalf("installed ftpgate run --help: %v", err)
	}
	page, _ := os.ReadFile(man)
	for _, l := range strings.Split(string(help), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || !strings.HasPrefix(f[0], "--") {
			continue
		}
		// pflag writes a bool flag as --name[=true|false].
		name, _, _ := strings.Cut(f[0][2:], "[")
		if !strings.Contains(string(page), `\-\-`+strings.ReplaceAll(name, "-", `\-`)+"\n") && !strings.Contains(string(page), `\-\-`+strings.ReplaceAll(name, "-", `\-`)+" ") {
			t.Errorf("the man page lacks --%s", name)
		}
	}
	// The default configuration is valid (its keys are all commented
	// out, so it parses to the defaults).
	if out, err := exec.Command(binPath, "run", "--config", conf, "--capture", "bogus").CombinedOutput(); !strings.Contains(string(out), `--capture "bogus"`) {
		t.Errorf("the default configuration did not load: %v\n%s", err, out)
	}
	unitText, _ := os.ReadFile(unit)
	if !strings.Contains(string(unitText), "ExecStart=/usr/local/sbin/ftpgate run") {
		t.Errorf("unit ExecStart:\n%s", unitText)
	}
	for _, want := range []string{"NoNewPrivileges=yes", "ProtectSystem=strict", "Restart=on-failure", "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW", "ExecReload=/bin/kill -HUP $MAINPID", "Type=notify"} {
		if !strings.Contains(string(unitText), want) {
			t.Errorf("unit lacks %s", want)
		}
	}
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Log("systemd-analyze not installed: the unit is not verified")
		return
	}
	// Verify a copy that points at the staged binary.
	staged := filepath.Join(t.TempDir(), "ftpgate.service")
	os.WriteFile(staged, []byte(strings.ReplaceAll(string(unitText), "/usr/local/sbin/ftpgate", binPath)), 0o644)
	if out, err := exec.Command("systemd-analyze", "verify", "--man=no", staged).CombinedOutput(); err != nil || strings.Contains(string(out), "ftpgate.service") {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
