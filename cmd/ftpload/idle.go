package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// cmdIdleServer is a minimal FTP server for the idle-session measurement:
// it greets, accepts any login and then only answers NOOP and QUIT. It
// costs a goroutine per session where vsftpd costs two processes.
func cmdIdleServer(args []string) error {
	fs := flag.NewFlagSet("idle-server", flag.ContinueOnError)
	listen := fs.String("listen", "", "address:port to listen on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			fmt.Fprint(c, "220 idle server\r\n")
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				verb := strings.ToUpper(strings.Fields(sc.Text() + " x")[0])
				switch verb {
				case "USER":
					fmt.Fprint(c, "331 password please\r\n")
				case "PASS":
					fmt.Fprint(c, "230 logged in\r\n")
				case "QUIT":
					fmt.Fprint(c, "221 bye\r\n")
					return
				default:
					fmt.Fprint(c, "200 ok\r\n")
				}
			}
		}()
	}
}

// cmdIdle opens many control sessions, logs each in, holds them all idle
// for a while and closes them.
func cmdIdle(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("idle", flag.ContinueOnError)
	server := fs.String("server", "", "server address:port")
	sessions := fs.Int("sessions", 10000, "control sessions to hold")
	hold := fs.Duration("hold", 20*time.Second, "how long to hold them all open")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if _, err := netip.ParseAddrPort(*server); err != nil {
		return fmt.Errorf("--server: %w", err)
	}
	var ok, failed atomic.Int64
	conns := make([]net.Conn, *sessions)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 200) // open at most 200 at once
	start := time.Now()
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := net.DialTimeout("tcp", *server, 10*time.Second)
			if err != nil {
				failed.Add(1)
				return
			}
			r := bufio.NewReader(c)
			c.SetDeadline(time.Now().Add(10 * time.Second))
			for _, cmd := range []string{"", "USER anonymous\r\n", "PASS x\r\n"} {
				if cmd != "" {
					fmt.Fprint(c, cmd)
				}
				if _, err := r.ReadString('\n'); err != nil {
					failed.Add(1)
					c.Close()
					return
				}
			}
			c.SetDeadline(time.Time{})
			conns[i] = c
			ok.Add(1)
		}()
	}
	wg.Wait()
	opened := time.Since(start)
	time.Sleep(*hold)
	for _, c := range conns {
		if c != nil {
			fmt.Fprint(c, "QUIT\r\n")
			c.Close()
		}
	}
	return json.NewEncoder(stdout).Encode(map[string]any{
		"sessions": *sessions, "logged_in": ok.Load(), "failed": failed.Load(),
		"open_seconds": opened.Seconds(), "held_seconds": hold.Seconds(),
	})
}
