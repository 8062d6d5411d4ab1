// Command forge is the attacker of ftpgate's hostile end-to-end tests: it
// sends raw frames to the lab's gateway (forged FTP exchanges, bad
// checksums, segments outside the window, spoofed resets, SYN floods),
// injects into a real FTP session, and opens racing connections. It runs
// in a lab namespace, as root, and sends only to lab addresses.
//
//	forge exchange -dev IF -gwmac MAC -client ADDR -server ADDR -mode pasv|epsv|port [-good-sum] [-client-port N]
//	forge session -dev IF -gwmac MAC -server ADDR:PORT [-inject KIND] CMD...
//	forge connect -at UNIX_NANO -every DUR TARGET...
//	forge synrace -dev IF -gwmac MAC -src ADDR -at UNIX_NANO -every DUR TARGET...
//	forge synflood -dev IF -gwmac MAC -server ADDR:PORT -from PREFIX -n N
package main

import (
	"bufio"
	"encoding/binary"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: forge exchange|session|connect|synflood [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "exchange":
		err = exchange(os.Args[2:])
	case "session":
		err = session(os.Args[2:])
	case "connect":
		err = connect(os.Args[2:])
	case "synflood":
		err = synflood(os.Args[2:])
	case "synrace":
		err = synrace(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "forge:", err)
		os.Exit(1)
	}
}

// wireFlags are the flags every command that sends raw frames takes.
func wireFlags(fs *flag.FlagSet) (dev, gwmac *string) {
	return fs.String("dev", "", "interface towards the gateway"), fs.String("gwmac", "", "the gateway's MAC address on it")
}

// wire sends Ethernet frames to the gateway on one interface.
type wire struct {
	fd    int
	ifidx int
	src   net.HardwareAddr
	gw    net.HardwareAddr
}

func openWire(dev, gwmac string) (*wire, error) {
	ifc, err := net.InterfaceByName(dev)
	if err != nil {
		return nil, err
	}
	gw, err := net.ParseMAC(gwmac)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return nil, fmt.Errorf("AF_PACKET socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifc.Index}); err != nil {
		return nil, err
	}
	return &wire{fd: fd, ifidx: ifc.Index, src: ifc.HardwareAddr, gw: gw}, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// seg is one TCP segment to forge.
type seg struct {
	src, dst netip.AddrPort
	seq, ack uint32
	flags    string // S, A, F, R, P
	payload  string
	badSum   bool
}

func (w *wire) send(s seg) error {
	frame, err := w.frame(s)
	if err != nil {
		return err
	}
	return unix.Sendto(w.fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: w.ifidx, Halen: 6, Addr: [8]byte(append(w.gw[:6:6], 0, 0))})
}

func (w *wire) frame(s seg) ([]byte, error) {
	eth := &layers.Ethernet{SrcMAC: w.src, DstMAC: w.gw}
	tcp := &layers.TCP{
		SrcPort: layers.TCPPort(s.src.Port()), DstPort: layers.TCPPort(s.dst.Port()),
		Seq: s.seq, Ack: s.ack, Window: 64240,
		SYN: strings.Contains(s.flags, "S"), ACK: strings.Contains(s.flags, "A"),
		FIN: strings.Contains(s.flags, "F"), RST: strings.Contains(s.flags, "R"),
		PSH: strings.Contains(s.flags, "P") || s.payload != "",
	}
	var ip gopacket.SerializableLayer
	if s.src.Addr().Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: s.src.Addr().AsSlice(), DstIP: s.dst.Addr().AsSlice()}
		_ = tcp.SetNetworkLayerForChecksum(ip4)
		ip = ip4
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP, SrcIP: s.src.Addr().AsSlice(), DstIP: s.dst.Addr().AsSlice()}
		_ = tcp.SetNetworkLayerForChecksum(ip6)
		ip = ip6
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, tcp, gopacket.Payload(s.payload)); err != nil {
		return nil, err
	}
	frame := buf.Bytes()
	if s.badSum {
		off := 14 + 20
		if !s.src.Addr().Is4() {
			off = 14 + 40
		}
		frame[off+16] ^= 0xa5
	}
	return frame, nil
}

// exchange forges a whole FTP exchange, both halves, from this host:
// the client half from the client address, the server half with the
// server's address.
func exchange(args []string) error {
	fs := flag.NewFlagSet("exchange", flag.ExitOnError)
	dev, gwmac := wireFlags(fs)
	client := fs.String("client", "", "client address")
	server := fs.String("server", "", "server address")
	mode := fs.String("mode", "pasv", "pasv, epsv or port")
	goodSum := fs.Bool("good-sum", false, "correct checksums (the default forges bad ones)")
	cport := fs.Int("client-port", 40123, "client port of the forged control connection")
	dataPort := fs.Int("data-port", 2222, "the data port the exchange announces")
	fs.Parse(args)
	w, err := openWire(*dev, *gwmac)
	if err != nil {
		return err
	}
	c := netip.AddrPortFrom(netip.MustParseAddr(*client), uint16(*cport))
	s := netip.AddrPortFrom(netip.MustParseAddr(*server), 21)
	cs, ss := rand.Uint32(), rand.Uint32()
	bad := !*goodSum
	var lines [][2]string // {from, text}
	switch *mode {
	case "pasv":
		a := s.Addr().As4()
		lines = [][2]string{{"c", "PASV\r\n"}, {"s", fmt.Sprintf("227 Entering Passive Mode (%d,%d,%d,%d,%d,%d).\r\n", a[0], a[1], a[2], a[3], *dataPort>>8, *dataPort&0xff)}}
	case "epsv":
		lines = [][2]string{{"c", "EPSV\r\n"}, {"s", fmt.Sprintf("229 Entering Extended Passive Mode (|||%d|)\r\n", *dataPort)}}
	case "port":
		a := c.Addr().As4()
		lines = [][2]string{{"c", fmt.Sprintf("PORT %d,%d,%d,%d,%d,%d\r\n", a[0], a[1], a[2], a[3], *dataPort>>8, *dataPort&0xff)}, {"s", "200 PORT command successful.\r\n"}}
	default:
		return fmt.Errorf("mode %q", *mode)
	}
	steps := []seg{
		{src: c, dst: s, seq: cs, flags: "S", badSum: bad},
		{src: s, dst: c, seq: ss, ack: cs + 1, flags: "SA", badSum: bad},
		{src: c, dst: s, seq: cs + 1, ack: ss + 1, flags: "A", badSum: bad},
	}
	cs, ss = cs+1, ss+1
	greeting := "220 (vsFTPd 3.0.3)\r\n"
	steps = append(steps, seg{src: s, dst: c, seq: ss, ack: cs, flags: "A", payload: greeting, badSum: bad})
	ss += uint32(len(greeting))
	for _, l := range lines {
		if l[0] == "c" {
			steps = append(steps, seg{src: c, dst: s, seq: cs, ack: ss, flags: "A", payload: l[1], badSum: bad})
			cs += uint32(len(l[1]))
		} else {
			steps = append(steps, seg{src: s, dst: c, seq: ss, ack: cs, flags: "A", payload: l[1], badSum: bad})
			ss += uint32(len(l[1]))
		}
	}
	for _, st := range steps {
		if err := w.send(st); err != nil {
			return err
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

// session runs a real FTP session from this host and, at the point
// given, forges a segment into it. Each CMD is sent and its reply
// printed; "@inject" marks where the forged segment goes, "@sleep=DUR"
// waits, "@replies=N" reads N replies, "@mark=TEXT" prints TEXT, and a
// CMD ending in "!" is sent without waiting for a reply.
//
// Kinds of injection (-inject):
//
//	badsum-port  the -forged command with a bad checksum at the next
//	             sequence number
//	window-port  the -forged command with a good checksum 3 MB beyond the
//	             window, after the end of some line
//	badsum-rst   a reset with a bad checksum
//	random-rst   a reset with a good checksum and a random sequence number
//	prelude      the commands of -prelude, sent before the greeting
func session(args []string) error {
	fs := flag.NewFlagSet("session", flag.ExitOnError)
	dev, gwmac := wireFlags(fs)
	server := fs.String("server", "", "server ADDR:PORT")
	kind := fs.String("inject", "", "what to forge at @inject")
	forged := fs.String("forged", "PORT 192,0,2,10,13,61", "the forged command")
	prelude := fs.String("prelude", "", "bytes to send right after connecting, before the greeting (\\n for CR LF)")
	fs.Parse(args)
	w, err := openWire(*dev, *gwmac)
	if err != nil {
		return err
	}
	tr, err := newTracker(w.fd)
	if err != nil {
		return err
	}
	conn, err := net.DialTimeout("tcp", *server, 3*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	local := conn.LocalAddr().(*net.TCPAddr).AddrPort()
	remote := conn.RemoteAddr().(*net.TCPAddr).AddrPort()
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	tr.watch(local, remote)
	if *prelude != "" {
		if _, err := conn.Write([]byte(strings.ReplaceAll(*prelude, `\n`, "\r\n"))); err != nil {
			return err
		}
	}
	rd := bufio.NewReader(conn)
	readReply := func() (string, error) {
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		var all []string
		for {
			l, err := rd.ReadString('\n')
			if err != nil {
				return strings.Join(all, ""), err
			}
			all = append(all, l)
			if len(l) >= 4 && l[3] == ' ' {
				return strings.Join(all, ""), nil
			}
		}
	}
	greet, err := readReply()
	fmt.Print(greet)
	if err != nil {
		return err
	}
	for _, cmd := range fs.Args() {
		switch {
		case cmd == "@inject":
			time.Sleep(200 * time.Millisecond) // let the sniffer see everything so far
			if err := tr.inject(w, *kind, *forged); err != nil {
				return err
			}
			time.Sleep(50 * time.Millisecond)
			continue
		case strings.HasPrefix(cmd, "@sleep="):
			d, err := time.ParseDuration(strings.TrimPrefix(cmd, "@sleep="))
			if err != nil {
				return err
			}
			time.Sleep(d)
			continue
		case strings.HasPrefix(cmd, "@mark="): // tell the test where the session is
			fmt.Println(strings.TrimPrefix(cmd, "@mark="))
			continue
		case strings.HasPrefix(cmd, "@replies="): // read that many replies
			n, _ := strconv.Atoi(strings.TrimPrefix(cmd, "@replies="))
			for range n {
				r, err := readReply()
				fmt.Print(r)
				if err != nil {
					return err
				}
			}
			continue
		}
		noWait := strings.HasSuffix(cmd, "!")
		text := strings.ReplaceAll(strings.TrimSuffix(cmd, "!"), `\n`, "\r\n")
		if !strings.HasSuffix(text, "\r\n") {
			text += "\r\n"
		}
		if _, err := conn.Write([]byte(text)); err != nil {
			return err
		}
		if noWait {
			continue
		}
		r, err := readReply()
		fmt.Print(r)
		if err != nil {
			return err
		}
	}
	return nil
}

// tracker follows the sequence numbers of one connection of this host
// on an AF_PACKET socket.
type tracker struct {
	mu             sync.Mutex
	local, remote  netip.AddrPort
	watching       bool
	ourNext, their uint32
	seen           bool
}

func newTracker(fd int) (*tracker, error) {
	t := &tracker{}
	go func() {
		buf := make([]byte, 1<<16)
		for {
			n, from, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				if err == syscall.EINTR {
					continue
				}
				return
			}
			ll, _ := from.(*unix.SockaddrLinklayer)
			t.packet(buf[:n], ll != nil && ll.Pkttype == unix.PACKET_OUTGOING)
		}
	}()
	return t, nil
}

func (t *tracker) watch(local, remote netip.AddrPort) {
	t.mu.Lock()
	t.local, t.remote, t.watching = local, remote, true
	t.mu.Unlock()
}

func (t *tracker) packet(b []byte, out bool) {
	p := gopacket.NewPacket(b, layers.LayerTypeEthernet, gopacket.NoCopy)
	tl, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if tl == nil || p.NetworkLayer() == nil {
		return
	}
	src, _ := netip.AddrFromSlice(p.NetworkLayer().NetworkFlow().Src().Raw())
	dst, _ := netip.AddrFromSlice(p.NetworkLayer().NetworkFlow().Dst().Raw())
	s := netip.AddrPortFrom(src.Unmap(), uint16(tl.SrcPort))
	d := netip.AddrPortFrom(dst.Unmap(), uint16(tl.DstPort))
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.watching {
		return
	}
	end := tl.Seq + uint32(len(tl.Payload))
	if tl.SYN || tl.FIN {
		end++
	}
	switch {
	case s == t.local && d == t.remote:
		if !t.seen || int32(end-t.ourNext) > 0 {
			t.ourNext = end
		}
		t.seen = true
	case s == t.remote && d == t.local:
		if int32(end-t.their) > 0 || t.their == 0 {
			t.their = end
		}
	}
}

func (t *tracker) inject(w *wire, kind, forged string) error {
	t.mu.Lock()
	s := seg{src: t.local, dst: t.remote, seq: t.ourNext, ack: t.their, flags: "A"}
	t.mu.Unlock()
	switch kind {
	case "badsum-port":
		s.payload, s.badSum = forged+"\r\n", true
	case "window-port":
		// After a line's tail, so that a resync at the segment's start
		// keeps the PORT.
		s.payload, s.seq = "X\r\n"+forged+"\r\n", s.seq+3<<20
	case "badsum-rst":
		s.flags, s.badSum = "RA", true
	case "random-rst":
		s.flags, s.seq = "RA", s.seq+rand.Uint32N(1<<30)+1<<30
	default:
		return fmt.Errorf("injection %q", kind)
	}
	return w.send(s)
}

// connect opens one TCP connection to each target, the i-th at AT +
// i*EVERY, and reports which ones were established.
func connect(args []string) error {
	fs := flag.NewFlagSet("connect", flag.ExitOnError)
	at := fs.Int64("at", 0, "start time, Unix nanoseconds")
	every := fs.Duration("every", 3*time.Millisecond, "time between targets")
	fs.Parse(args)
	time.Sleep(time.Until(time.Unix(0, *at)))
	start := time.Now()
	var wg sync.WaitGroup
	results := make([]bool, fs.NArg())
	for i, target := range fs.Args() {
		time.Sleep(time.Until(start.Add(time.Duration(i) * *every)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", target, 1500*time.Millisecond)
			if err == nil {
				results[i] = true
				time.Sleep(200 * time.Millisecond)
				c.Close()
			}
		}()
	}
	wg.Wait()
	n := 0
	for i, ok := range results {
		if ok {
			n++
			fmt.Println("connected", fs.Arg(i))
		}
	}
	fmt.Println("established", n)
	return nil
}

// synflood sends SYNs from many addresses of a prefix (none of which
// will answer the SYN-ACK) to a server: half-open control connections.
func synflood(args []string) error {
	fs := flag.NewFlagSet("synflood", flag.ExitOnError)
	dev, gwmac := wireFlags(fs)
	server := fs.String("server", "", "server ADDR:PORT")
	from := fs.String("from", "", "source prefix, e.g. 192.0.2.128/25")
	n := fs.Int("n", 1000, "SYNs")
	fs.Parse(args)
	w, err := openWire(*dev, *gwmac)
	if err != nil {
		return err
	}
	pfx, err := netip.ParsePrefix(*from)
	if err != nil {
		return err
	}
	dst := netip.MustParseAddrPort(*server)
	base := pfx.Masked().Addr().As4()
	size := uint32(1) << (32 - pfx.Bits())
	for i := range *n {
		a := binary.BigEndian.Uint32(base[:]) + 1 + uint32(i)%(size-2)
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], a)
		src := netip.AddrPortFrom(netip.AddrFrom4(b), uint16(20000+i%40000))
		if err := w.send(seg{src: src, dst: dst, seq: rand.Uint32(), flags: "S"}); err != nil {
			return err
		}
		if i%50 == 49 {
			time.Sleep(time.Millisecond)
		}
	}
	return nil
}

// synrace sends one SYN to each target, the i-th at exactly AT + i*EVERY:
// the frames are built beforehand and the time is awaited spinning, so
// that two of these processes, pinned to two CPUs, put their SYNs for a
// target through the gateway at the same moment.
func synrace(args []string) error {
	fs := flag.NewFlagSet("synrace", flag.ExitOnError)
	dev, gwmac := wireFlags(fs)
	src := fs.String("src", "", "source address")
	at := fs.Int64("at", 0, "start time, Unix nanoseconds")
	every := fs.Duration("every", 2*time.Millisecond, "time between targets")
	fs.Parse(args)
	w, err := openWire(*dev, *gwmac)
	if err != nil {
		return err
	}
	frames := make([][]byte, fs.NArg())
	for i, target := range fs.Args() {
		s := seg{src: netip.AddrPortFrom(netip.MustParseAddr(*src), uint16(32768+rand.IntN(28000))),
			dst: netip.MustParseAddrPort(target), seq: rand.Uint32(), flags: "S"}
		if frames[i], err = w.frame(s); err != nil {
			return err
		}
	}
	start := time.Unix(0, *at)
	sa := &unix.SockaddrLinklayer{Ifindex: w.ifidx, Halen: 6, Addr: [8]byte(append(w.gw[:6:6], 0, 0))}
	for i, f := range frames {
		due := start.Add(time.Duration(i) * *every)
		for time.Now().Before(due) {
		}
		if err := unix.Sendto(w.fd, f, 0, sa); err != nil {
			return err
		}
	}
	return nil
}
