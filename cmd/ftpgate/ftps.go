package main

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	flag "github.com/spf13/pflag"

	"github.com/ftpgate/ftpgate/conntrack"
)

// prefixRange is ADDR=LO-HI: a port range of an address or a prefix.
type prefixRange struct {
	prefix netip.Prefix
	lo, hi uint16
}

// prefixRanges is ADDR=LO-HI[,ADDR=LO-HI...].
type prefixRanges []prefixRange

func (r *prefixRanges) Type() string { return "ADDR=LO-HI" }

func (r *prefixRanges) String() string {
	parts := make([]string, len(*r))
	for i, x := range *r {
		parts[i] = fmt.Sprintf("%s=%d-%d", prefixText(x.prefix), x.lo, x.hi)
	}
	return strings.Join(parts, ",")
}

func prefixText(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

func (r *prefixRanges) Set(v string) error {
	var out prefixRanges
	for _, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		addr, ports, ok := strings.Cut(item, "=")
		if !ok {
			return fmt.Errorf("%q: want ADDR=LO-HI, e.g. 198.51.100.20=40000-40999", item)
		}
		p, err := parsePrefixOrAddr(addr)
		if err != nil {
			return err
		}
		lo, hi, err := parseRange(ports)
		if err != nil {
			return fmt.Errorf("%q: %v", item, err)
		}
		out = append(out, prefixRange{prefix: p, lo: lo, hi: hi})
	}
	*r = out
	return nil
}

func (r prefixRanges) ftps() []conntrack.FTPSRange {
	out := make([]conntrack.FTPSRange, len(r))
	for i, x := range r {
		out[i] = conntrack.FTPSRange{Server: x.prefix, Lo: x.lo, Hi: x.hi}
	}
	return out
}

func (r prefixRanges) active() []conntrack.ActiveRange {
	out := make([]conntrack.ActiveRange, len(r))
	for i, x := range r {
		out[i] = conntrack.ActiveRange{Client: x.prefix, Lo: x.lo, Hi: x.hi}
	}
	return out
}

func parsePrefixOrAddr(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	return netip.Prefix{}, fmt.Errorf("%q is neither an address nor a prefix", s)
}

func parseRange(s string) (uint16, uint16, error) {
	a, b, ok := strings.Cut(s, "-")
	lo, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 16)
	hi, err2 := strconv.ParseUint(strings.TrimSpace(b), 10, 16)
	if !ok || err1 != nil || err2 != nil || lo < 1024 || hi < lo {
		return 0, 0, fmt.Errorf("want LO-HI with 1024 <= LO <= HI <= 65535")
	}
	return uint16(lo), uint16(hi), nil
}

// optionalPorts is a port list that may be "none".
type optionalPorts struct{ portList }

func (p *optionalPorts) Type() string { return "ports" }

func (p *optionalPorts) String() string {
	if len(p.portList) == 0 {
		return "none"
	}
	return p.portList.String()
}

func (p *optionalPorts) Set(v string) error {
	if v == "none" || v == "" {
		p.portList = nil
		return nil
	}
	return p.portList.Set(v)
}

// ftpsFlags are run's flags for FTPS.
type ftpsFlags struct {
	ranges       prefixRanges
	implicit     optionalPorts
	active       prefixRanges
	maxPerClient int
	max          int
}

func (f *ftpsFlags) register(fs *flag.FlagSet) {
	f.implicit = optionalPorts{portList{990}}
	fs.Var(&f.ranges, "ftps-passive-ports", "FTPS servers' passive port ranges, `ADDR=LO-HI`[,...] (a prefix for several servers): while a session to such a server is encrypted, its client alone may connect to that range of that server, until the session ends")
	fs.Var(&f.implicit, "ftps-implicit-ports", "control `ports` of implicit FTPS (encrypted from the first byte), or none")
	fs.Var(&f.active, "ftps-active", "FTPS clients' active-mode ports, `ADDR=LO-HI`[,...] (the range each client is configured to listen on; a prefix for several clients): while such a client's implicit FTPS session is encrypted, its server may connect from port 989 to those ports of that client, and to no other; default none (active FTPS is not opened)")
	fs.IntVar(&f.maxPerClient, "max-scoped-per-client", conntrack.DefaultMaxScopedPerClient, "at most this many FTPS scoped ranges open per client (per address; per /64 for IPv6)")
	fs.IntVar(&f.max, "max-scoped", conntrack.DefaultMaxScoped, "at most this many FTPS scoped ranges open in all")
}

// apply puts the FTPS settings into the tracker's configuration; the
// implicit ports become control ports too.
func (f *ftpsFlags) apply(cfg *conntrack.Config) error {
	if f.maxPerClient <= 0 || f.max <= 0 {
		return fmt.Errorf("--max-scoped-per-client and --max-scoped must be positive")
	}
	cfg.FTPSRanges = append(cfg.FTPSRanges, f.ranges.ftps()...)
	cfg.ImplicitPorts = append([]uint16{}, f.implicit.portList...)
	cfg.ActiveRanges = f.active.active()
	cfg.MaxScopedPerClient, cfg.MaxScoped = f.maxPerClient, f.max
	cfg.ControlPorts = withPorts(cfg.ControlPorts, cfg.ImplicitPorts)
	return nil
}

// withPorts is ports with every one of more that it lacks.
func withPorts(ports, more []uint16) []uint16 {
	out := slices.Clone(ports)
	for _, p := range more {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}
