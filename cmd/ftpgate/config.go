package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
	flag "github.com/spf13/pflag"

	"github.com/ftpgate/ftpgate/conntrack"
)

// DefaultConfigFile is read by ftpgate run when it exists and --config
// does not name another.
const DefaultConfigFile = "/etc/ftpgate/ftpgate.toml"

// liveKeys are the settings a SIGHUP changes in a running daemon; the
// others take effect at the next start.
var liveKeys = map[string]bool{
	"log-level": true, "min-data-port": true, "pinhole-timeout": true, "idle-timeout": true,
	"handshake-timeout": true, "max-pinholes-per-session": true, "server": true,
	"control-ports": true, "ftps-passive-ports": true, "ftps-implicit-ports": true, "ftps-active": true,
}

// applyConfigFile reads a TOML configuration and sets every flag it names
// that the command line did not set: flags override the file. Its keys
// are the flags' names; [[server]] tables scope ftpgate to some servers
// (serverKeys). An unknown key, or a value its flag refuses, is an error
// that names the line.
func applyConfigFile(fs *flag.FlagSet, path string) ([]conntrack.ServerPolicy, []conntrack.FTPSRange, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	var doc map[string]any
	if err := toml.Unmarshal(data, &doc); err != nil {
		var de *toml.DecodeError
		if errors.As(err, &de) {
			line, col := de.Position()
			return nil, nil, fmt.Errorf("%s:%d:%d: %s", path, line, col, de.Error())
		}
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	keys := make([]string, 0, len(doc))
	for k := range doc {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keyLine(data, -1, keys[i]) < keyLine(data, -1, keys[j]) })
	var servers []conntrack.ServerPolicy
	var ranges []conntrack.FTPSRange
	for _, k := range keys {
		v := doc[k]
		if k == "server" {
			if servers, ranges, err = parseServers(data, path, v); err != nil {
				return nil, nil, err
			}
			continue
		}
		f := fs.Lookup(k)
		if f == nil || k == "config" {
			return nil, nil, fmt.Errorf("%s:%d: unknown key %q (the keys are the flags of ftpgate run, and [[server]] tables)", path, keyLine(data, -1, k), k)
		}
		if f.Changed {
			continue // the command line wins
		}
		s, err := flagValue(v)
		if err == nil {
			err = fs.Set(k, s)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%s:%d: %s: %v", path, keyLine(data, -1, k), k, err)
		}
	}
	return servers, ranges, nil
}

// serverKeys are the keys of a [[server]] table.
var serverKeys = map[string]string{
	"address":            "the server's address, or a prefix of servers (198.51.100.20, 2001:db8:2::/64)",
	"control-ports":      "its control ports (default: all of control-ports)",
	"min-data-port":      "refuse announced data ports below this for it",
	"active":             "false refuses active mode (PORT, EPRT, LPRT) to it",
	"pinhole-timeout":    "the lifetime of its pinholes",
	"ftps-passive-ports": "its passive range, LO-HI, opened to the client of an encrypted session while it lives",
}

func parseServers(data []byte, path string, v any) ([]conntrack.ServerPolicy, []conntrack.FTPSRange, error) {
	list, ok := v.([]any)
	if !ok {
		return nil, nil, fmt.Errorf("%s:%d: server: want [[server]] tables", path, keyLine(data, -1, "server"))
	}
	var out []conntrack.ServerPolicy
	var ranges []conntrack.FTPSRange
	for i, e := range list {
		tbl, ok := e.(map[string]any)
		if !ok {
			return nil, nil, fmt.Errorf("%s: server %d: want a table", path, i+1)
		}
		at := func(k string) string {
			return fmt.Sprintf("%s:%d: server %d: %s", path, serverLine(data, i, k), i+1, k)
		}
		var sp conntrack.ServerPolicy
		addr, ok := tbl["address"].(string)
		if !ok {
			return nil, nil, fmt.Errorf("%s:%d: server %d: address is required", path, serverLine(data, i, ""), i+1)
		}
		if p, err := netip.ParsePrefix(addr); err == nil {
			sp.Prefix = p.Masked()
		} else if a, err := netip.ParseAddr(addr); err == nil {
			sp.Prefix = netip.PrefixFrom(a, a.BitLen())
		} else {
			return nil, nil, fmt.Errorf("%s: %q is neither an address nor a prefix", at("address"), addr)
		}
		for k, v := range tbl {
			var err error
			switch k {
			case "address":
			case "control-ports":
				var s string
				if s, err = flagValue(v); err == nil {
					var pl portList
					err = pl.Set(s)
					sp.Ports = pl
				}
			case "min-data-port":
				n, ok := v.(int64)
				if !ok || n < 0 || n > 65535 {
					err = fmt.Errorf("want a port 0-65535")
				}
				sp.MinDataPort = uint16(n)
			case "active":
				b, ok := v.(bool)
				if !ok {
					err = fmt.Errorf("want true or false")
				}
				sp.NoActive = !b
			case "ftps-passive-ports":
				s, ok := v.(string)
				if !ok {
					err = fmt.Errorf(`want "LO-HI"`)
				} else {
					var lo, hi uint16
					if lo, hi, err = parseRange(s); err == nil {
						ranges = append(ranges, conntrack.FTPSRange{Server: sp.Prefix, Lo: lo, Hi: hi})
					}
				}
			case "pinhole-timeout":
				s, ok := v.(string)
				if !ok {
					err = fmt.Errorf(`want a duration such as "30s"`)
				} else if sp.PinholeTimeout, err = time.ParseDuration(s); err == nil && sp.PinholeTimeout < time.Second {
					err = fmt.Errorf("at least 1s")
				}
			default:
				names := make([]string, 0, len(serverKeys))
				for n := range serverKeys {
					names = append(names, n)
				}
				sort.Strings(names)
				return nil, nil, fmt.Errorf("%s: unknown key (a server has %s)", at(k), strings.Join(names, ", "))
			}
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %v", at(k), err)
			}
		}
		out = append(out, sp)
	}
	return out, ranges, nil
}

// flagValue turns a TOML value into the text its flag parses: arrays
// become comma-separated lists.
func flagValue(v any) (string, error) {
	switch v := v.(type) {
	case string:
		return v, nil
	case int64:
		return strconv.FormatInt(v, 10), nil
	case bool:
		return strconv.FormatBool(v), nil
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64), nil
	case []any:
		parts := make([]string, len(v))
		for i, e := range v {
			s, err := flagValue(e)
			if err != nil {
				return "", err
			}
			parts[i] = s
		}
		return strings.Join(parts, ","), nil
	}
	return "", fmt.Errorf("unsupported value %v", v)
}

var (
	headerRE = regexp.MustCompile(`^\s*\[\[?\s*([A-Za-z0-9_."-]+)\s*\]\]?`)
	keyRE    = regexp.MustCompile(`^\s*"?([A-Za-z0-9_-]+)"?\s*=`)
)

// keyLine finds the line of key at the top level (server -1) or in the
// server'th [[server]] table ("" for the table's header). The TOML
// decoder gives values, not positions; a config file is small enough to
// look again.
func keyLine(data []byte, server int, key string) int {
	table, n := "", -1
	for i, l := range strings.Split(string(data), "\n") {
		if m := headerRE.FindStringSubmatch(l); m != nil {
			table = m[1]
			if table == "server" {
				n++
				if server == n && key == "" {
					return i + 1
				}
			}
			if table == key && server < 0 {
				return i + 1
			}
			continue
		}
		m := keyRE.FindStringSubmatch(l)
		if m == nil || m[1] != key {
			continue
		}
		if (server < 0 && table == "") || (table == "server" && n == server) {
			return i + 1
		}
	}
	return 0
}

func serverLine(data []byte, i int, key string) int {
	if l := keyLine(data, i, key); l > 0 {
		return l
	}
	return keyLine(data, i, "")
}
