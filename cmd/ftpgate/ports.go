package main

import (
	"log/slog"
	"net/netip"
	"time"

	"github.com/ftpgate/ftpgate/capture"
	"github.com/ftpgate/ftpgate/rules"
)

// forwardsFor is how long the admin's port forwards, as read from the
// ruleset, are trusted: one the admin adds later is honoured at most that
// much later.
const forwardsFor = 5 * time.Second

// publicPorts says which public address:ports NAT must not hand out:
// those this host listens on, and those the admin's own rules forward.
// It runs on the loop's goroutine, like every use of fw.
type publicPorts struct {
	fw       *rules.Nftables
	sockets  *capture.LocalSockets
	log      *slog.Logger
	forwards []rules.PortForward
	readAt   time.Time
}

func (p *publicPorts) inUse(ap netip.AddrPort) bool {
	if p.sockets.Listening(ap) {
		return true
	}
	if time.Since(p.readAt) > forwardsFor {
		f, err := p.fw.PortForwards()
		if err != nil {
			p.log.Warn("could not read the ruleset's port forwards; NAT ports are checked against the last list read", "error", err)
		} else {
			p.forwards = f
		}
		p.readAt = time.Now()
	}
	for _, f := range p.forwards {
		if f.Covers(ap) {
			return true
		}
	}
	return false
}

// warnOverlap logs the admin's forwards that take ports of --nat-ports:
// ftpgate will not hand those out.
func (p *publicPorts) warnOverlap(r portRange) {
	f, err := p.fw.PortForwards()
	if err != nil {
		p.log.Warn("could not read the ruleset's port forwards", "error", err)
		return
	}
	p.forwards, p.readAt = f, time.Now()
	for _, x := range f {
		overlaps := len(x.Ports) == 0
		for _, pr := range x.Ports {
			overlaps = overlaps || pr[0] <= r[1] && r[0] <= pr[1]
		}
		if overlaps {
			p.log.Warn("your ruleset forwards ports of --nat-ports; ftpgate will not hand those out for NAT",
				"rule", x.String(), "nat_ports", r.String())
		}
	}
}
