package main

import (
	"fmt"
	"log/slog"
	"math/bits"
	"os"
	"strconv"
	"time"

	"github.com/ftpgate/ftpgate/conntrack"
	"github.com/ftpgate/ftpgate/nat"
	"github.com/ftpgate/ftpgate/rules"
	flag "github.com/spf13/pflag"
)

// portRange is LO-HI.
type portRange [2]uint16

func (r *portRange) String() string { return fmt.Sprintf("%d-%d", r[0], r[1]) }

func (r *portRange) Type() string { return "LO-HI" }

func (r *portRange) Set(v string) error {
	lo, hi, err := parseRange(v)
	if err != nil {
		return fmt.Errorf("%q: %v", v, err)
	}
	*r = portRange{lo, hi}
	return nil
}

// hexBit is a flag value printed in hex: a mark bit.
type hexBit uint

func (h *hexBit) String() string { return fmt.Sprintf("%#08x", uint(*h)) }

func (h *hexBit) Type() string { return "bit" }

func (h *hexBit) Set(v string) error {
	n, err := strconv.ParseUint(v, 0, 32)
	if err != nil {
		return err
	}
	*h = hexBit(n)
	return nil
}

// natFlags are run's flags for NAT gateways.
type natFlags struct {
	mode       string
	path       string
	shift      string
	queue      uint
	state      string
	ports      portRange
	proxyPort  uint
	routeMark  hexBit
	socketMark hexBit
	table      int
	maxProxied int
	perClient  int
	portsShare int
	// kernelShifts: the packet path leaves the shift to the kernel
	// (decided at start: --nat-shift, and what the kernel can do).
	kernelShifts bool
}

func (f *natFlags) register(fs *flag.FlagSet) {
	f.ports = portRange(conntrack.DefaultNATPorts)
	fs.StringVar(&f.mode, "nat", "on", "on: ftpgate rewrites the announcements of control connections your NAT rules translate (masquerade, dnat) and maps their data connections (inline capture only; see --nat-path); off: they are treated like any other")
	fs.StringVar(&f.path, "nat-path", "packet", "packet: translated control connections' segments are queued both ways (--nat-queue), announcements rewritten in them and every later segment's sequence numbers shifted by ftpgate, with nothing dropped; proxy: they run through ftpgate's control proxy, which takes them over from the client's SYN retry (a second's delay at every login)")
	fs.StringVar(&f.shift, "nat-shift", "ftpgate", "who shifts the sequence numbers after a rewrite in the packet path: ftpgate: ftpgate itself (every segment queued, before conntrack); kernel: the kernel's seqadj, told by each rewritten segment's verdict, for IPv4 (needs CONFIG_NETFILTER_NETLINK_GLUE_CT and nfnetlink_cthelper; only segments with data, SYN, FIN or RST are queued, and the shift survives ftpgate; not the default: under load one PASV transfer in five through a port forward failed with it, see docs/PERFORMANCE.md); auto: kernel where it can, else ftpgate")
	fs.UintVar(&f.queue, "nat-queue", 2122, "NFQUEUE `number` of the NAT packet path (0-65535, not --queue's)")
	fs.StringVar(&f.state, "nat-state", "", "`file` where the NAT packet path keeps what a restart needs of translated sessions whose sequence numbers it shifts (default /run/ftpgate/TABLE-NETNS.nat.json, one per network namespace)")
	fs.Var(&f.ports, "nat-ports", "`LO-HI` range of public ports ftpgate hands out for rewritten announcements; keep it outside net.ipv4.ip_local_port_range")
	fs.IntVar(&f.portsShare, "nat-ports-per-client", 0, "at most this many of --nat-ports held for one client (per address; per /64 for IPv6) at once; 0: a sixteenth of the range, at least 4")
	fs.UintVar(&f.proxyPort, "proxy-port", 8021, "`port` of the control proxy on 127.0.0.1 and ::1 (only ftpgate's tproxy rules reach it)")
	f.routeMark, f.socketMark = 0x02000000, 0x04000000
	fs.Var(&f.routeMark, "proxy-route-mark", "packet mark `bit` that routes the control proxy's connections to this host (a policy routing rule ftpgate adds)")
	fs.Var(&f.socketMark, "proxy-socket-mark", "packet mark `bit` of the control proxy's own sockets")
	fs.IntVar(&f.table, "proxy-route-table", 2121, "routing `table` (and rule priority) of the control proxy's local route")
	fs.IntVar(&f.maxProxied, "max-proxied", 4096, "at most this many control sessions through the control proxy at once (each costs about 35 KiB), those still connecting to their server included; beyond, the client's connection is closed and logged")
	fs.IntVar(&f.perClient, "max-proxied-per-client", 0, "at most this many of them from one client (per address; per /64 for IPv6), so that no one source takes the proxy; 0: a sixteenth of --max-proxied, at least 4")
}

// enabled checks the flags against the capture and the admit mark.
func (f *natFlags) enabled(inline bool, admit mark) (bool, error) {
	switch f.mode {
	case "off":
		return false, nil
	case "on":
	default:
		return false, fmt.Errorf("--nat %q: want on or off", f.mode)
	}
	if f.path != "packet" && f.path != "proxy" {
		return false, fmt.Errorf("--nat-path %q: want packet or proxy", f.path)
	}
	if f.shift != "auto" && f.shift != "kernel" && f.shift != "ftpgate" {
		return false, fmt.Errorf("--nat-shift %q: want auto, kernel or ftpgate", f.shift)
	}
	if !inline {
		return false, nil
	}
	switch {
	case f.packet() && f.queue > 65535:
		return false, fmt.Errorf("--nat-queue %d: want 0-65535", f.queue)
	case f.proxyPort == 0 || f.proxyPort > 65535:
		return false, fmt.Errorf("--proxy-port %d: want 1-65535", f.proxyPort)
	case bits.OnesCount(uint(f.routeMark)) != 1:
		return false, fmt.Errorf("--proxy-route-mark %s: want one bit", f.routeMark.String())
	case bits.OnesCount(uint(f.socketMark)) != 1 || f.socketMark == f.routeMark:
		return false, fmt.Errorf("--proxy-socket-mark %s: want one bit, not the route mark's", f.socketMark.String())
	case uint32(f.routeMark|f.socketMark)&admit.mask != 0:
		// The packet mark of an admitted held SYN uses --mark's bits.
		return false, fmt.Errorf("--proxy-route-mark and --proxy-socket-mark must not share bits with --mark %s", admit.String())
	case f.maxProxied <= 0:
		return false, fmt.Errorf("--max-proxied %d: want 1 or more", f.maxProxied)
	case f.perClient < 0:
		return false, fmt.Errorf("--max-proxied-per-client %d: want 0 (a sixteenth of --max-proxied) or more", f.perClient)
	case f.portsShare < 0:
		return false, fmt.Errorf("--nat-ports-per-client %d: want 0 (a sixteenth of --nat-ports) or more", f.portsShare)
	case f.table <= 0 || (f.table >= 253 && f.table <= 255):
		return false, fmt.Errorf("--proxy-route-table %d: want a table other than main, local and default", f.table)
	}
	return true, nil
}

// packet says whether NAT runs in the packet path.
func (f *natFlags) packet() bool { return f.path == "packet" }

// rules is the NAT part of the ruleset. A translated connection's
// element outlives its session's idle timeout by a minute: the tracker
// ends an idle session first, and ftpgate then forgets the element.
func (f *natFlags) rules(ports []uint16, idle time.Duration) *rules.NATConfig {
	return &rules.NATConfig{ProxyPort: uint16(f.proxyPort), RouteMark: uint32(f.routeMark), SocketMark: uint32(f.socketMark), Ports: ports,
		Packet: f.packet(), Queue: uint16(f.queue), TranslatedTimeout: idle + time.Minute,
		KernelShifts: f.kernelShifts, HelperStub: nat.HelperStub}
}

// perClientShare is --max-proxied-per-client, its default worked out.
func (f *natFlags) perClientShare() int {
	if f.perClient == 0 {
		return conntrack.DefaultShare(f.maxProxied)
	}
	return f.perClient
}

// ipv6OffWarning is logged at start on a host with IPv6 disabled.
const ipv6OffWarning = "IPv6 is disabled on this host (net.ipv6.conf.lo.disable_ipv6): NAT of IPv6 control connections is off, IPv4 NAT works"

// startProxy adds the proxy's routes and starts it.
func (f *natFlags) startProxy(log *slog.Logger) (*nat.Proxy, *nat.ProxyRoutes, error) {
	ipv6 := nat.IPv6Enabled()
	if !ipv6 {
		log.Warn(ipv6OffWarning)
	}
	routes, err := nat.AddProxyRoutes(uint32(f.routeMark), f.table, ipv6)
	if err != nil {
		return nil, nil, err
	}
	p, err := nat.OpenProxy(nat.ProxyConfig{Port: uint16(f.proxyPort), SocketMark: uint32(f.socketMark),
		MaxConns: f.maxProxied, MaxPerSource: f.perClientShare(), Log: log, NoIPv6: !ipv6})
	if err != nil {
		routes.Close()
		return nil, nil, err
	}
	warnPortsOverlap(f.ports, log)
	return p, routes, nil
}

// warnPortsOverlap warns when --nat-ports overlaps the kernel's ephemeral
// range: this host's own connections, and masquerade, may then hold a
// port ftpgate hands out.
func warnPortsOverlap(r portRange, log *slog.Logger) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return
	}
	var lo, hi uint16
	if _, err := fmt.Sscan(string(b), &lo, &hi); err != nil {
		return
	}
	if r[0] <= hi && lo <= r[1] {
		log.Warn("--nat-ports overlaps net.ipv4.ip_local_port_range: this host's own connections may hold ports ftpgate hands out",
			"nat_ports", r.String(), "ip_local_port_range", fmt.Sprintf("%d-%d", lo, hi))
	}
}
