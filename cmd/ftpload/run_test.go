package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ftpgate/ftpgate/parser"
)

// fakeFTPServer answers just what ftpload run sends, on host: a login,
// TYPE, PASV, EPSV, PORT, EPRT and RETR of a file of ten bytes.
func fakeFTPServer(t *testing.T, host string, refuseData bool) netip.AddrPort {
	t.Helper()
	return listenFake(t, host, func(c net.Conn) { serveFakeFTP(c, refuseData) })
}

// listenFake serves each connection to host with serve.
func listenFake(t *testing.T, host string, serve func(net.Conn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Skipf("no %s here: %v", host, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serve(c)
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// refuseData: the server refuses every data command.
func serveFakeFTP(c net.Conn, refuseData bool) {
	defer c.Close()
	fmt.Fprint(c, "220 fake\r\n")
	var passive net.Listener
	var active string
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		verb, arg, _ := strings.Cut(sc.Text(), " ")
		if refuseData && verb != "USER" && verb != "PASS" && verb != "TYPE" && verb != "QUIT" {
			verb = "refused"
		}
		switch verb {
		case "refused":
			fmt.Fprint(c, "500 not here\r\n")
		case "USER":
			fmt.Fprint(c, "331 password\r\n")
		case "PASV", "EPSV":
			var err error
			host, _, _ := net.SplitHostPort(c.LocalAddr().String())
			if passive, err = net.Listen("tcp", net.JoinHostPort(host, "0")); err != nil {
				fmt.Fprint(c, "425 no\r\n")
				continue
			}
			p := passive.Addr().(*net.TCPAddr).Port
			if verb == "PASV" {
				fmt.Fprintf(c, "227 Entering Passive Mode (127,0,0,1,%d,%d)\r\n", p>>8, p&0xff)
			} else {
				fmt.Fprintf(c, "229 Entering Extended Passive Mode (|||%d|)\r\n", p)
			}
		case "PORT", "EPRT":
			cmd, err := parser.ParseCommand([]byte(verb + " " + arg))
			if err != nil {
				fmt.Fprint(c, "501 no\r\n")
				continue
			}
			active = cmd.Endpoint.String()
			fmt.Fprint(c, "200 ok\r\n")
		case "RETR":
			var data net.Conn
			var err error
			if passive != nil {
				data, err = passive.Accept()
				passive.Close()
				passive = nil
			} else {
				data, err = net.Dial("tcp", active)
			}
			if err != nil {
				fmt.Fprint(c, "425 no data connection\r\n")
				continue
			}
			fmt.Fprint(c, "150 here\r\n")
			data.Write([]byte("0123456789"))
			data.Close()
			fmt.Fprint(c, "226 done\r\n")
		case "QUIT":
			fmt.Fprint(c, "221 bye\r\n")
			return
		default:
			fmt.Fprint(c, "230 ok\r\n")
		}
	}
}

// TestRunModes: every transfer of every session succeeds in each mode.
func TestRunModes(t *testing.T) {
	testModes(t, fakeFTPServer(t, "127.0.0.1", false), "pasv", "epsv", "port", "eprt")
}

// TestRunModesIPv6: the extended commands over IPv6.
func TestRunModesIPv6(t *testing.T) {
	testModes(t, fakeFTPServer(t, "::1", false), "epsv", "eprt")
}

func testModes(t *testing.T, srv netip.AddrPort, modes ...string) {
	for _, mode := range modes {
		r := runLoad(t, srv, "--mode", mode, "--sessions", "3", "--transfers", "4")
		if r.Mode != strings.ToUpper(mode) || r.Sessions != 3 || r.Wanted != 12 || r.Succeeded != 12 || r.Failed != 0 || r.FirstErr != "" ||
			r.SetupMax < r.SetupP99 || r.SetupP99 < r.SetupP50 || r.PerSecond <= 0 {
			t.Errorf("%s: %+v", mode, r)
		}
	}
}

// runLoad runs ftpload run against srv and returns its result.
func runLoad(t *testing.T, srv netip.AddrPort, args ...string) Result {
	t.Helper()
	var out bytes.Buffer
	args = append([]string{"--server", srv.Addr().String(), "--port", fmt.Sprint(srv.Port())}, args...)
	if err := cmdRun(args, &out); err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	var r Result
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestRunFailures: no server, or a server that refuses every data
// command: every transfer counts as failed, and the first error is kept.
func TestRunFailures(t *testing.T) {
	r := runLoad(t, netip.MustParseAddrPort("127.0.0.1:1"), "--sessions", "2", "--transfers", "3")
	if r.Wanted != 6 || r.Succeeded != 0 || r.Failed != 6 || !strings.Contains(r.FirstErr, "refused") {
		t.Errorf("%+v", r)
	}
	srv := fakeFTPServer(t, "127.0.0.1", true)
	for _, mode := range []string{"pasv", "epsv", "port", "eprt"} {
		r := runLoad(t, srv, "--mode", mode, "--sessions", "2", "--transfers", "3")
		if r.Wanted != 6 || r.Succeeded != 0 || r.Failed != 6 || !strings.Contains(r.FirstErr, "not here") {
			t.Errorf("%s, the server refusing: %+v", mode, r)
		}
	}
	var out bytes.Buffer
	for _, args := range [][]string{{"--server", "nowhere"}, {"--server", "127.0.0.1", "--mode", "lprt"}} {
		if err := cmdRun(args, &out); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}

// TestRunLoginTime: the login time runs from connect() to the reply that
// logs in: a slow greeting counts in it, a slow reply to TYPE after the
// login does not.
func TestRunLoginTime(t *testing.T) {
	srv := listenFake(t, "127.0.0.1", func(c net.Conn) {
		serveFakeFTP(&slowReplies{Conn: c, delay: map[int]time.Duration{1: 100 * time.Millisecond, 4: 400 * time.Millisecond}}, false)
	})
	r := runLoad(t, srv, "--sessions", "2", "--transfers", "1")
	if r.Succeeded != 2 || r.LoginMax < 100 || r.LoginMax >= 400 {
		t.Errorf("login max %.1f ms, want 100-400 (greeting late by 100, TYPE's reply by 400): %+v", r.LoginMax, r)
	}
}

// slowReplies delays the server's nth reply (from 1: the greeting, 331,
// the 230 of PASS, the reply to TYPE, ...) by delay[n].
type slowReplies struct {
	net.Conn
	n     int
	delay map[int]time.Duration
}

func (s *slowReplies) Write(b []byte) (int, error) {
	s.n++
	time.Sleep(s.delay[s.n])
	return s.Conn.Write(b)
}
