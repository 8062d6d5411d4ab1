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
	// LoginMax is the longest a session took to connect and log in (a
	// NAT gateway's control proxy takes over a connection on the
	// client's second SYN, about a second after the first).
	LoginMax float64 `json:"login_max_ms"`
	FirstErr string  `json:"first_error,omitempty"`
}

// slowSetup is the setup time above which a data connection must have
// waited for a retransmitted SYN (Linux retransmits after 1 s).
const slowSetup = 900 * time.Millisecond

func cmdRun(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	server := fs.String("server", "", "FTP server address (IPv4 or IPv6 literal)")
	port := fs.Int("port", 21, "FTP control port")
	mode := fs.String("mode", "pasv", "pasv, epsv, port or eprt")
	sessions := fs.Int("sessions", 20, "concurrent control sessions")
	transfers := fs.Int("transfers", 500, "transfers per session, each on a new data connection")
	file := fs.String("file", "empty.txt", "file to RETR")
	if err := fs.Parse(args); err != nil {
		return err
	}
	addr, err := netip.ParseAddr(*server)
	if err != nil {
		return fmt.Errorf("--server: %w", err)
	}
	switch *mode {
	case "pasv", "epsv", "port", "eprt":
	default:
		return fmt.Errorf("--mode %q: want pasv, epsv, port or eprt", *mode)
	}
	ctrl := netip.AddrPortFrom(addr, uint16(*port)).String()
	var (
		mu       sync.Mutex
		setups   []time.Duration
		failed   int
		firstErr string
		wg       sync.WaitGroup
	)
	start := time.Now()
	var loggedIn sync.WaitGroup // every session logs in before any transfers
	loggedIn.Add(*sessions)
	var loginMax time.Duration
	var transfersFrom time.Time
	ready := make(chan struct{})
	go func() {
		loggedIn.Wait()
		transfersFrom = time.Now()
		close(ready)
	}()
	for range *sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, nfail, err := session(ctrl, *mode, *file, *transfers, func() {
				d := time.Since(start)
				mu.Lock()
				loginMax = max(loginMax, d)
				mu.Unlock()
				loggedIn.Done()
				<-ready
			})
			mu.Lock()
			defer mu.Unlock()
			setups = append(setups, got...)
			failed += nfail
			if err != nil && firstErr == "" {
				firstErr = err.Error()
			}
		}()
	}
	wg.Wait()
	<-ready
	elapsed := time.Since(transfersFrom)
	r := Result{
		Mode: strings.ToUpper(*mode), Server: *server, Sessions: *sessions,
		Wanted: *sessions * *transfers, Succeeded: len(setups), Seconds: elapsed.Seconds(), FirstErr: firstErr,
	}
	r.Failed = r.Wanted - r.Succeeded
	r.LoginMax = float64(loginMax.Microseconds()) / 1000
	slices.Sort(setups)
	if n := len(setups); n > 0 {
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		r.SetupP50 = ms(setups[n/2])
		r.SetupP99 = ms(setups[min(n-1, n*99/100)])
		r.SetupMax = ms(setups[n-1])
		for _, d := range setups {
			if d > slowSetup {
				r.Slow++
			}
		}
		r.PerSecond = float64(n) / elapsed.Seconds()
	}
	return json.NewEncoder(stdout).Encode(r)
}

// ftpConn is a logged-in control connection.
type ftpConn struct {
	c  net.Conn
	tp *textproto.Conn
}

func dial(ctrl string) (*ftpConn, error) {
	c, err := net.DialTimeout("tcp", ctrl, 10*time.Second)
	if err != nil {
		return nil, err
	}
	f := &ftpConn{c: c, tp: textproto.NewConn(c)}
	if _, _, err := f.tp.ReadResponse(220); err != nil {
		c.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	// Anonymous login: some servers want a password (331), some do not (230).
	if err := f.tp.PrintfLine("USER anonymous"); err != nil {
		c.Close()
		return nil, err
	}
	code, _, err := f.tp.ReadResponse(0)
	if err == nil && code == 331 {
		_, err = f.cmd(2, "PASS load@")
	} else if err == nil && code/100 != 2 {
		err = fmt.Errorf("USER: %d", code)
	}
	if err == nil {
		_, err = f.cmd(2, "TYPE I")
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return f, nil
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
// succeeded, the number that failed and the first error.
func session(ctrl, mode, file string, n int, loggedIn func()) ([]time.Duration, int, error) {
	f, err := dial(ctrl)
	loggedIn()
	if err != nil {
		return nil, n, err
	}
	defer f.c.Close()
	var setups []time.Duration
	var firstErr error
	failed := 0
	for range n {
		d, err := f.transfer(mode, file)
		if err != nil {
			failed++
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
	return setups, failed, firstErr
}

// transfer downloads file on a new data connection. Setup is the
// connect() duration in passive mode, and from sending RETR to accept()
// in active mode.
func (f *ftpConn) transfer(mode, file string) (time.Duration, error) {
	var data net.Conn
	var setup time.Duration
	switch mode {
	case "pasv", "epsv":
		var target netip.AddrPort
		if mode == "pasv" {
			msg, err := f.cmd(227, "PASV")
			if err != nil {
				return 0, err
			}
			if target, err = parser.ParsePASVReply([]byte(msg)); err != nil {
				return 0, err
			}
		} else {
			msg, err := f.cmd(229, "EPSV")
			if err != nil {
				return 0, err
			}
			p, err := parser.ParseEPSVReply([]byte(msg))
			if err != nil {
				return 0, err
			}
			target = netip.AddrPortFrom(f.c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr(), p)
		}
		t0 := time.Now()
		c, err := net.DialTimeout("tcp", target.String(), 10*time.Second)
		setup = time.Since(t0)
		if err != nil {
			return 0, err
		}
		data = c
		if err := f.tp.PrintfLine("RETR %s", file); err != nil {
			data.Close()
			return 0, err
		}
	case "port", "eprt":
		local := f.c.LocalAddr().(*net.TCPAddr).AddrPort().Addr()
		ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(local, 0)))
		if err != nil {
			return 0, err
		}
		defer ln.Close()
		p := ln.Addr().(*net.TCPAddr).AddrPort().Port()
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
			return 0, err
		}
		t0 := time.Now()
		if err := f.tp.PrintfLine("RETR %s", file); err != nil {
			return 0, err
		}
		ln.SetDeadline(time.Now().Add(10 * time.Second))
		c, err := ln.Accept()
		setup = time.Since(t0)
		if err != nil {
			return 0, err
		}
		data = c
	}
	defer data.Close()
	f.c.SetDeadline(time.Now().Add(15 * time.Second))
	if _, _, err := f.tp.ReadResponse(1); err != nil {
		return 0, fmt.Errorf("RETR: %w", err)
	}
	data.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := io.Copy(io.Discard, data); err != nil {
		return 0, err
	}
	if _, _, err := f.tp.ReadResponse(2); err != nil {
		return 0, fmt.Errorf("RETR end: %w", err)
	}
	return setup, nil
}
