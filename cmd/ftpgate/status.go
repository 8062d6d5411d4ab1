package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ftpgate/ftpgate/capture"
	"github.com/ftpgate/ftpgate/conntrack"
	flag "github.com/spf13/pflag"
)

// DefaultStatusSocket is where `ftpgate run` answers `ftpgate status`.
const DefaultStatusSocket = "/run/ftpgate/status.sock"

// statusServer answers status requests on a unix socket only root (the
// socket's owner) may open. The tracker belongs to the loop's goroutine,
// so each request is a call run there.
type statusServer struct {
	ln   net.Listener
	path string
}

func startStatus(path string, calls *capture.Calls, status func() any, log *slog.Logger) (*statusServer, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("status socket %s: another ftpgate answers on it", path)
	}
	_ = os.Remove(path) // left by a killed ftpgate
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("status socket: %w", err)
	}
	s := &statusServer{ln: ln, path: path}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				done := make(chan []byte, 1)
				calls.Do(func() {
					b, err := json.Marshal(status())
					if err != nil {
						log.Error("status", "error", err)
					}
					done <- b
				})
				select {
				case b := <-done:
					_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
					_, _ = c.Write(append(b, '\n'))
				case <-time.After(5 * time.Second):
				}
			}()
		}
	}()
	return s, nil
}

func (s *statusServer) Close() error {
	err := s.ln.Close()
	_ = os.Remove(s.path)
	return err
}

// daemonStatus is what the daemon reports: the tracker's state and the
// daemon's own facts.
type daemonStatus struct {
	Version string `json:"version"`
	conntrack.Status
}

func statusFlags() *flag.FlagSet {
	fs, _, _ := newStatusFlags()
	return fs
}

func newStatusFlags() (fs *flag.FlagSet, socket, format *string) {
	fs = newFlagSet("status")
	socket = fs.String("socket", DefaultStatusSocket, "`path` of the running daemon's status socket (run --status-socket)")
	format = fs.String("format", "text", "text or json")
	return fs, socket, format
}

func cmdStatus(args []string, stdout io.Writer) error {
	fs, socket, format := newStatusFlags()
	help := func(w io.Writer) { writeHelp(w, statusCommand, fs) }
	if err := parseFlags(fs, args, help, stdout); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("no arguments expected, got %q", strings.Join(fs.Args(), " "))
	}
	if *format != "text" && *format != "json" {
		return usagef("--format %q: want text or json", *format)
	}
	c, err := net.DialTimeout("unix", *socket, 5*time.Second)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("no daemon answers on %s (is ftpgate run running, with this --status-socket?)", *socket)
		}
		return fmt.Errorf("asking the daemon: %w", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("reading the daemon's status: %w", err)
	}
	if *format == "json" {
		_, err = stdout.Write(b)
		return err
	}
	var st daemonStatus
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("the daemon's status: %w", err)
	}
	writeStatus(stdout, st)
	return nil
}

func writeStatus(w io.Writer, st daemonStatus) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "ftpgate %s, status at %s\n\n", st.Version, st.Time.UTC().Format(time.RFC3339))
	fmt.Fprintf(tw, "SESSIONS: %d\n", len(st.Sessions))
	if len(st.Sessions) > 0 {
		fmt.Fprintln(tw, "ID\tCLIENT\tSERVER\tAGE\tIDLE\tSTATE\tPINHOLES")
		for _, s := range st.Sessions {
			state := s.State
			if s.PickedUp {
				state += " (picked up)"
			}
			if s.State == "nat" {
				state += fmt.Sprintf(" (client seen as %s, server as %s)", s.ClientSeenAs, s.ServerSeenAs)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\n", s.ID, s.Client, s.Server, secs(s.Age), secs(s.Idle), state, s.Pinholes)
		}
	}
	committed := 0
	for _, p := range st.Pinholes {
		if p.Committed {
			committed++
		}
	}
	fmt.Fprintf(tw, "\nPINHOLES: %d (%d in the kernel)\n", len(st.Pinholes), committed)
	if len(st.Pinholes) > 0 {
		fmt.Fprintln(tw, "SESSION\tCOMMAND\tPEER\tTO\tEXPIRES IN\tIN KERNEL\tPUBLIC")
		for _, p := range st.Pinholes {
			pub := "-"
			if p.Public.IsValid() {
				pub = p.Public.String()
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\t%s\n", p.Session, p.Command, p.Peer, p.Addr,
				secs(conntrack.Seconds(p.Expires.Sub(st.Time).Seconds())), p.Committed, pub)
		}
	}
	if len(st.Scoped) > 0 {
		fmt.Fprintf(tw, "\nSCOPED RANGES (FTPS): %d\n", len(st.Scoped))
		fmt.Fprintln(tw, "SESSION\tCLIENT\tSERVER\tPORTS\tSINCE\tPUBLIC")
		for _, r := range st.Scoped {
			pub := "-"
			if r.Public.IsValid() {
				pub = r.Public.String()
			}
			ports := r.Ports
			if r.Active {
				ports += " (+ from 989)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Session, r.Client, r.Server, ports, r.Since.UTC().Format(time.TimeOnly), pub)
		}
	}
	fmt.Fprintln(tw, "\nCOUNTERS")
	v := reflect.ValueOf(st.Stats)
	for i := range v.NumField() {
		f := v.Type().Field(i)
		name := strings.Split(f.Tag.Get("json"), ",")[0]
		if name == "" || name == "-" {
			continue
		}
		fmt.Fprintf(tw, "%s\t%v\n", name, v.Field(i).Interface())
	}
	for _, m := range []struct {
		title string
		by    map[string]uint64
	}{{"pinholes closed by", st.ClosedBy}, {"channels refused by", st.RefusedBy}} {
		keys := make([]string, 0, len(m.by))
		for k := range m.by {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			fmt.Fprintf(tw, "%s %s\t%d\n", m.title, k, m.by[k])
		}
	}
	tw.Flush()
}

func secs(s conntrack.Seconds) string {
	return time.Duration(float64(s) * float64(time.Second)).Round(100 * time.Millisecond).String()
}

// statusDescription is status's help, and its part of the man page.
const statusDescription = `Asks the running daemon, over its status socket, what it holds now: every
control session (client, server, age, state: half-open, clear, encrypted
or nat, and whether it was picked up mid-stream), every open pinhole with
its key, its expiry and whether it has been committed to the kernel yet
(nft list shows only those that have; within --commit-delay a pinhole
lives in ftpgate alone, and most are used there), and every counter.
The socket is root's alone by default.

`
