package main

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
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

// parseServers reads the [[server]] tables: a policy each, and the FTPS
// ranges of those that give one.
func parseServers(data []byte, path string, v any) ([]conntrack.ServerPolicy, []conntrack.FTPSRange, error) {
	list, ok := v.([]any)
	if !ok {
		return nil, nil, fmt.Errorf("%s:%d: server: want [[server]] tables", path, keyLine(data, -1, "server"))
	}
	var out []conntrack.ServerPolicy
	var ranges []conntrack.FTPSRange
	for i, e := range list {
		sp, ftps, err := parseServer(data, path, i, e)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, sp)
		if ftps != nil {
			ranges = append(ranges, *ftps)
		}
	}
	return out, ranges, nil
}

// parseServer reads the i'th [[server]] table. Its address comes first:
// its FTPS range belongs to it.
func parseServer(data []byte, path string, i int, e any) (sp conntrack.ServerPolicy, ftps *conntrack.FTPSRange, err error) {
	tbl, ok := e.(map[string]any)
	if !ok {
		return sp, nil, fmt.Errorf("%s: server %d: want a table", path, i+1)
	}
	at := func(k string) string {
		return fmt.Sprintf("%s:%d: server %d: %s", path, serverLine(data, i, k), i+1, k)
	}
	addr, ok := tbl["address"].(string)
	if !ok {
		return sp, nil, fmt.Errorf("%s:%d: server %d: address is required", path, serverLine(data, i, ""), i+1)
	}
	if sp.Prefix, err = parsePrefixOrAddr(addr); err != nil {
		return sp, nil, fmt.Errorf("%s: %v", at("address"), err)
	}
	for k, v := range tbl {
		r, err := setServerKey(&sp, k, v)
		if err != nil {
			return sp, nil, fmt.Errorf("%s: %v", at(k), err)
		}
		if r != nil {
			ftps = r
		}
	}
	return sp, ftps, nil
}

// setServerKey sets what key k of a [[server]] table gives: a part of
// the policy, or the server's FTPS range.
func setServerKey(sp *conntrack.ServerPolicy, k string, v any) (ftps *conntrack.FTPSRange, err error) {
	switch k {
	case "address": // read first, by parseServer
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
			return nil, fmt.Errorf("want a port 0-65535")
		}
		sp.MinDataPort = uint16(n)
	case "active":
		b, ok := v.(bool)
		if !ok {
			return nil, fmt.Errorf("want true or false")
		}
		sp.NoActive = !b
	case "ftps-passive-ports":
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf(`want "LO-HI"`)
		}
		lo, hi, err := parseRange(s)
		if err != nil {
			return nil, err
		}
		return &conntrack.FTPSRange{Server: sp.Prefix, Lo: lo, Hi: hi}, nil
	case "pinhole-timeout":
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf(`want a duration such as "30s"`)
		}
		if sp.PinholeTimeout, err = time.ParseDuration(s); err == nil && sp.PinholeTimeout < time.Second {
			err = fmt.Errorf("at least 1s")
		}
	default:
		return nil, fmt.Errorf("unknown key (a server has %s)", strings.Join(slices.Sorted(maps.Keys(serverKeys)), ", "))
	}
	return nil, err
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
