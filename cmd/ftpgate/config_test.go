package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftpgate/ftpgate/conntrack"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ftpgate.toml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConfigFile: every key is a flag; flags on the command line win;
// [[server]] tables become server policies.
func TestConfigFile(t *testing.T) {
	p := writeConfig(t, `# a gateway with two FTP servers
control-ports = [21, 2121]
min-data-port = 2000
pinhole-timeout = "30s"
log-level = "warn"
nat = "off"

[[server]]
address = "198.51.100.20"
active = false

[[server]]
address = "2001:db8:2::/64"
control-ports = [2121]
min-data-port = 40000
pinhole-timeout = "2m"
ftps-passive-ports = "40000-40999"
`)
	rv := newRunVars()
	servers, ranges, err := rv.load([]string{"--config", p, "--min-data-port", "3000"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := rv.tf.config(nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MinDataPort != 3000 || cfg.PinholeTimeout != 30*time.Second || rv.tf.logLevel != "warn" || rv.nf.mode != "off" ||
		len(cfg.ControlPorts) != 2 || cfg.ControlPorts[1] != 2121 {
		t.Errorf("config %+v, log level %s, nat %s", cfg, rv.tf.logLevel, rv.nf.mode)
	}
	if len(servers) != 2 || servers[0].Prefix != netip.MustParsePrefix("198.51.100.20/32") || !servers[0].NoActive ||
		servers[1].Prefix != netip.MustParsePrefix("2001:db8:2::/64") || servers[1].MinDataPort != 40000 ||
		servers[1].PinholeTimeout != 2*time.Minute || len(servers[1].Ports) != 1 || servers[1].NoActive {
		t.Errorf("servers %+v", servers)
	}
	if len(ranges) != 1 || ranges[0] != (conntrack.FTPSRange{Server: netip.MustParsePrefix("2001:db8:2::/64"), Lo: 40000, Hi: 40999}) {
		t.Errorf("FTPS ranges %+v", ranges)
	}
}

// TestConfigFileErrors: mistakes name the file and the line.
func TestConfigFileErrors(t *testing.T) {
	for _, tt := range []struct{ text, want string }{
		{"min-data-port = 1024\nbogus = 1\n", ":2: unknown key \"bogus\""},
		{"\n\npinhole-timeout = \"5\"\n", ":3: pinhole-timeout: "},
		{"[[server]]\naddress = \"198.51.100.20\"\nactiv = true\n", ":3: server 1: activ: unknown key"},
		{"[[server]]\nactive = true\n", ":1: server 1: address is required"},
		{"[[server]]\naddress = \"not an address\"\n", ":2: server 1: address: \"not an address\" is neither"},
		{"min-data-port = \n", ":1:"},
		{"[[server]]\naddress = \"198.51.100.20\"\nmin-data-port = 70000\n", ":3: server 1: min-data-port: want a port 0-65535"},
		{"[[server]]\naddress = \"198.51.100.20\"\nactive = \"no\"\n", ":3: server 1: active: want true or false"},
		{"[[server]]\naddress = \"198.51.100.20\"\n[[server]]\naddress = \"198.51.100.21\"\nftps-passive-ports = \"40000\"\n", ":5: server 2: ftps-passive-ports: want LO-HI"},
		{"[[server]]\naddress = \"198.51.100.20\"\nftps-passive-ports = 40000\n", ":3: server 1: ftps-passive-ports: want \"LO-HI\""},
		{"[[server]]\naddress = \"198.51.100.20\"\npinhole-timeout = \"500ms\"\n", ":3: server 1: pinhole-timeout: at least 1s"},
		{"[[server]]\naddress = \"198.51.100.20\"\ncontrol-ports = [0]\n", ":3: server 1: control-ports: \"0\" is not a port"},
		{"server = 1\n", ":1: server: want [[server]] tables"},
		{"config = \"/etc/other.toml\"\n", `:1: unknown key "config"`},
	} {
		p := writeConfig(t, tt.text)
		_, _, err := newRunVars().load([]string{"--config", p}, nil, nil)
		if err == nil || !strings.Contains(err.Error(), p+tt.want) {
			t.Errorf("%q: error %v, want %q", tt.text, err, p+tt.want)
		}
	}
	// A file named on the command line must exist; the default one may not.
	if _, _, err := newRunVars().load([]string{"--config", "/nonexistent/ftpgate.toml"}, nil, nil); err == nil {
		t.Error("a missing --config file is no error")
	}
}
