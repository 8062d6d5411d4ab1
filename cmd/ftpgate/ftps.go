package main

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	flag "github.com/spf13/pflag"

	"github.com/ftpgate/ftpgate/conntrack"
)

// ftpsRanges is ADDR=LO-HI[,ADDR=LO-HI...]: FTPS servers' passive ranges.
type ftpsRanges []conntrack.FTPSRange

func (r *ftpsRanges) Type() string { return "ADDR=LO-HI" }

func (r *ftpsRanges) String() string {
	parts := make([]string, len(*r))
	for i, x := range *r {
		parts[i] = fmt.Sprintf("%s=%d-%d", prefixText(x.Server), x.Lo, x.Hi)
	}
	return strings.Join(parts, ",")
}

func prefixText(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

func (r *ftpsRanges) Set(v string) error {
	var out ftpsRanges
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
		out = append(out, conntrack.FTPSRange{Server: p, Lo: lo, Hi: hi})
	}
	*r = out
	return nil
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
	ranges       ftpsRanges
	implicit     optionalPorts
	active       bool
	maxPerClient int
	max          int
}

func (f *ftpsFlags) register(fs *flag.FlagSet) {
	f.implicit = optionalPorts{portList{990}}
	fs.Var(&f.ranges, "ftps-passive-ports", "FTPS servers' passive port ranges, `ADDR=LO-HI`[,...] (a prefix for several servers): while a session to such a server is encrypted, its client alone may connect to that range of that server, until the session ends")
	fs.Var(&f.implicit, "ftps-implicit-ports", "control `ports` of implicit FTPS (encrypted from the first byte), or none")
	fs.BoolVar(&f.active, "ftps-active", false, "let implicit FTPS servers connect back to their client from port 989 (active mode) while the session lives")
	fs.IntVar(&f.maxPerClient, "max-scoped-per-client", conntrack.DefaultMaxScopedPerClient, "at most this many FTPS scoped ranges open per client address")
	fs.IntVar(&f.max, "max-scoped", conntrack.DefaultMaxScoped, "at most this many FTPS scoped ranges open in all")
}

// apply puts the FTPS settings into the tracker's configuration; the
// implicit ports become control ports too.
func (f *ftpsFlags) apply(cfg *conntrack.Config) error {
	if f.maxPerClient <= 0 || f.max <= 0 {
		return fmt.Errorf("--max-scoped-per-client and --max-scoped must be positive")
	}
	cfg.FTPSRanges = append(cfg.FTPSRanges, f.ranges...)
	cfg.ImplicitPorts = append([]uint16{}, f.implicit.portList...)
	cfg.ImplicitActive = f.active
	cfg.MaxScopedPerClient, cfg.MaxScoped = f.maxPerClient, f.max
	for _, p := range cfg.ImplicitPorts {
		found := false
		for _, c := range cfg.ControlPorts {
			found = found || c == p
		}
		if !found {
			cfg.ControlPorts = append(cfg.ControlPorts, p)
		}
	}
	return nil
}
