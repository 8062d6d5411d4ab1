package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ftpgate/ftpgate/parser"
)

// Result is what one run reports, as JSON.
type Result struct {
	Mode      string  `json:"mode"`
	Server    string  `json:"server"`
	Sessions  int     `json:"sessions"`
	Wanted    int     `json:"wanted"`
	Succeeded int     `json:"succeeded"`
	Failed    int     `json:"failed"`
	SetupP50  float64 `json:"setup_p50_ms"`
	SetupP99  float64 `json:"setup_p99_ms"`
	SetupMax  float64 `json:"setup_max_ms"`
	Slow      int     `json:"slow"`            // setup > 900 ms: a dropped first SYN
	PerSecond float64 `json:"transfers_per_s"` // from when every session had logged in
	Seconds   float64 `json:"seconds"`
	// LoginMax is the slowest login of the sessions that logged in: from
	// the start of the control connection's connect() to the reply that
	// logs it in (230), so a dropped first SYN counts in it (a NAT
	// gateway's control proxy takes over a connection on the client's
	// second SYN, about a second after the first).
	LoginMax float64 `json:"login_max_ms"`
	FirstErr string  `json:"first_error,omitempty"`
}

// slowSetup is the setup time above which a data connection must have
// waited for a retransmitted SYN (Linux retransmits after 1 s).
const slowSetup = 900 * time.Millisecond

func cmdRun(args []string, stdout io.Writer) error {
	lf, err := parseLoadFlags(args)
	if err != nil {
		return err
	}
	return json.NewEncoder(stdout).Encode(runSessions(lf).result(lf))
}

// loadFlags are run's flags.
type loadFlags struct {
	server              string // as given, for the result
	ctrl                string // address:port of the control connections
	mode                string
	sessions, transfers int
	file                string
}

func parseLoadFlags(args []string) (loadFlags, error) {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	server := fs.String("server", "", "FTP server address (IPv4 or IPv6 literal)")
	port := fs.Int("port", 21, "FTP control port")
	mode := fs.String("mode", "pasv", "pasv, epsv, port or eprt")
	sessions := fs.Int("sessions", 20, "concurrent control sessions")
	transfers := fs.Int("transfers", 500, "transfers per session, each on a new data connection")
	file := fs.String("file", "empty.txt", "file to RETR")
	if err := fs.Parse(args); err != nil {
		return loadFlags{}, err
	}
	addr, err := netip.ParseAddr(*server)
	if err != nil {
		return loadFlags{}, fmt.Errorf("--server: %w", err)
	}
	switch *mode {
	case "pasv", "epsv", "port", "eprt":
	default:
		return loadFlags{}, fmt.Errorf("--mode %q: want pasv, epsv, port or eprt", *mode)
	}
	return loadFlags{server: *server, ctrl: netip.AddrPortFrom(addr, uint16(*port)).String(), mode: *mode,
		sessions: *sessions, transfers: *transfers, file: *file}, nil
}

// loadTally is what the sessions of a run measured.
type loadTally struct {
	mu       sync.Mutex
	setups   []time.Duration // one a transfer that succeeded
	firstErr string
	loginMax time.Duration // the slowest session's login (dial)
	elapsed  time.Duration // from the last login to the last transfer
}

// runSessions runs every session at once. Their transfers wait until the
// last has logged in, so that the rate counts transfers alone, not the
// logins (slow through a NAT gateway's control proxy).
func runSessions(lf loadFlags) *loadTally {
	t := &loadTally{}
	var loggedIn sync.WaitGroup
	loggedIn.Add(lf.sessions)
	var transfersFrom time.Time
	ready := make(chan struct{})
	go func() {
		loggedIn.Wait()
		transfersFrom = time.Now()
		close(ready)
	}()
	var wg sync.WaitGroup
	for range lf.sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			setups, err := session(lf.ctrl, lf.mode, lf.file, lf.transfers, func(login time.Duration) {
				t.loggedIn(login)
				loggedIn.Done()
				<-ready
			})
			t.add(setups, err)
		}()
	}
	wg.Wait()
	<-ready
	t.elapsed = time.Since(transfersFrom)
	return t
}

func (t *loadTally) loggedIn(login time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.loginMax = max(t.loginMax, login)
}

func (t *loadTally) add(setups []time.Duration, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.setups = append(t.setups, setups...)
	if err != nil && t.firstErr == "" {
		t.firstErr = err.Error()
	}
}

// result is the tally in the figures of the report. A transfer that did
// not succeed failed, whether its session got to try it or not.
func (t *loadTally) result(lf loadFlags) Result {
	r := Result{
		Mode: strings.ToUpper(lf.mode), Server: lf.server, Sessions: lf.sessions,
		Wanted: lf.sessions * lf.transfers, Succeeded: len(t.setups), Seconds: t.elapsed.Seconds(), FirstErr: t.firstErr,
	}
	r.Failed = r.Wanted - r.Succeeded
	r.LoginMax = ms(t.loginMax)
	setups := t.setups
	slices.Sort(setups)
	if n := len(setups); n > 0 {
		r.SetupP50 = ms(setups[n/2])
		r.SetupP99 = ms(setups[min(n-1, n*99/100)])
		r.SetupMax = ms(setups[n-1])
		for _, d := range setups {
			if d > slowSetup {
				r.Slow++
			}
		}
		r.PerSecond = float64(n) / t.elapsed.Seconds()
	}
	return r
}

// ms is d in milliseconds, to the microsecond.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// ftpConn is a logged-in control connection.
type ftpConn struct {
	c  net.Conn
	tp *textproto.Conn
}

// dial connects and logs in; login is how long that took, from the
// start of connect() to the reply that logged in.
func dial(ctrl string) (f *ftpConn, login time.Duration, err error) {
	t0 := time.Now()
	c, err := net.DialTimeout("tcp", ctrl, 10*time.Second)
	if err != nil {
		return nil, 0, err
	}
	f = &ftpConn{c: c, tp: textproto.NewConn(c)}
	if _, _, err := f.tp.ReadResponse(220); err != nil {
		c.Close()
		return nil, 0, fmt.Errorf("greeting: %w", err)
	}
	// Anonymous login: some servers want a password (331), some do not (230).
	if err := f.tp.PrintfLine("USER anonymous"); err != nil {
		c.Close()
		return nil, 0, err
	}
	code, _, err := f.tp.ReadResponse(0)
	if err == nil && code == 331 {
		_, err = f.cmd(2, "PASS load@")
	} else if err == nil && code/100 != 2 {
		err = fmt.Errorf("USER: %d", code)
	}
	login = time.Since(t0)
	if err == nil {
		_, err = f.cmd(2, "TYPE I")
	}
	if err != nil {
		c.Close()
		return nil, 0, err
	}
	return f, login, nil
}

// cmd sends a command and reads its reply, expecting the code class or code.
func (f *ftpConn) cmd(expect int, format string, args ...any) (string, error) {
	f.c.SetDeadline(time.Now().Add(15 * time.Second))
	if err := f.tp.PrintfLine(format, args...); err != nil {
		return "", err
	}
	_, msg, err := f.tp.ReadResponse(expect)
	if err != nil {
		return "", fmt.Errorf("%s: %w", strings.Fields(fmt.Sprintf(format, args...) + " ?")[0], err)
	}
	return msg, nil
}

// session runs n transfers and returns the setup time of each that
// succeeded and the first error. loggedIn is called once the session
// has logged in, with its login time, or has failed to (with 0).
func session(ctrl, mode, file string, n int, loggedIn func(login time.Duration)) ([]time.Duration, error) {
	f, login, err := dial(ctrl)
	loggedIn(login)
	if err != nil {
		return nil, err
	}
	defer f.c.Close()
	var setups []time.Duration
	var firstErr error
	for range n {
		d, err := f.transfer(mode, file)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			if f.c.SetDeadline(time.Time{}) != nil {
				break
			}
			continue
		}
		setups = append(setups, d)
	}
	_, _ = f.cmd(2, "QUIT")
	return setups, firstErr
}

// transfer downloads file on a new data connection. Setup is the
// connect() duration in passive mode, and from sending RETR to accept()
// in active mode.
func (f *ftpConn) transfer(mode, file string) (time.Duration, error) {
	var data net.Conn
	var setup time.Duration
	var err error
	switch mode {
	case "pasv", "epsv":
		data, setup, err = f.openPassive(mode, file)
	case "port", "eprt":
		var ln *net.TCPListener
		if ln, err = f.listen(); err != nil {
			return 0, err
		}
		defer ln.Close()
		data, setup, err = f.openActive(ln, mode, file)
	}
	if err != nil {
		return 0, err
	}
	defer data.Close()
	if err := f.receive(data); err != nil {
		return 0, err
	}
	return setup, nil
}

// openPassive asks the server for a port, connects to it and sends RETR.
func (f *ftpConn) openPassive(mode, file string) (net.Conn, time.Duration, error) {
	target, err := f.passiveTarget(mode)
	if err != nil {
		return nil, 0, err
	}
	t0 := time.Now()
	data, err := net.DialTimeout("tcp", target.String(), 10*time.Second)
	setup := time.Since(t0)
	if err != nil {
		return nil, 0, err
	}
	if err := f.tp.PrintfLine("RETR %s", file); err != nil {
		data.Close()
		return nil, 0, err
	}
	return data, setup, nil
}

// passiveTarget is where the server's reply to PASV or EPSV says to
// connect; EPSV's is on the control connection's server.
func (f *ftpConn) passiveTarget(mode string) (netip.AddrPort, error) {
	if mode == "pasv" {
		msg, err := f.cmd(227, "PASV")
		if err != nil {
			return netip.AddrPort{}, err
		}
		return parser.ParsePASVReply([]byte(msg))
	}
	msg, err := f.cmd(229, "EPSV")
	if err != nil {
		return netip.AddrPort{}, err
	}
	p, err := parser.ParseEPSVReply([]byte(msg))
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(f.c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr(), p), nil
}

// localAddr is the control connection's own address, which the server
// (and a firewall checking announcements) expects the data port on.
func (f *ftpConn) localAddr() netip.Addr { return f.c.LocalAddr().(*net.TCPAddr).AddrPort().Addr() }

// listen opens the port an active transfer announces.
func (f *ftpConn) listen() (*net.TCPListener, error) {
	return net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(f.localAddr(), 0)))
}

// openActive announces ln's port with PORT or EPRT, sends RETR and
// accepts the server's connection.
func (f *ftpConn) openActive(ln *net.TCPListener, mode, file string) (net.Conn, time.Duration, error) {
	local, p := f.localAddr(), ln.Addr().(*net.TCPAddr).AddrPort().Port()
	var err error
	if mode == "port" {
		a := local.As4()
		_, err = f.cmd(200, "PORT %d,%d,%d,%d,%d,%d", a[0], a[1], a[2], a[3], p>>8, p&0xff)
	} else {
		proto := 1
		if local.Is6() {
			proto = 2
		}
		_, err = f.cmd(200, "EPRT |%d|%s|%d|", proto, local, p)
	}
	if err != nil {
		return nil, 0, err
	}
	t0 := time.Now()
	if err := f.tp.PrintfLine("RETR %s", file); err != nil {
		return nil, 0, err
	}
	ln.SetDeadline(time.Now().Add(10 * time.Second))
	data, err := ln.Accept()
	setup := time.Since(t0)
	if err != nil {
		return nil, 0, err
	}
	return data, setup, nil
}

// receive reads the file from data, and RETR's replies around it.
func (f *ftpConn) receive(data net.Conn) error {
	f.c.SetDeadline(time.Now().Add(15 * time.Second))
	if _, _, err := f.tp.ReadResponse(1); err != nil {
		return fmt.Errorf("RETR: %w", err)
	}
	data.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := io.Copy(io.Discard, data); err != nil {
		return err
	}
	if _, _, err := f.tp.ReadResponse(2); err != nil {
		return fmt.Errorf("RETR end: %w", err)
	}
	return nil
}
