package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	flag "github.com/spf13/pflag"
)

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
	if len(b) == 0 {
		// The daemon closes without an answer when its loop did not get
		// to the question in time: still starting, or stuck.
		return fmt.Errorf("the daemon on %s gave no status (still starting, or its loop is stuck; try again)", *socket)
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

// statusDescription is status's help, and its part of the man page.
const statusDescription = `Asks the running daemon, over its status socket, what it holds now: every
control session (client, server, age, state: half-open, clear, encrypted
or nat, and whether it was picked up mid-stream), every open pinhole with
its key, its expiry and whether it has been committed to the kernel yet
(nft list shows only those that have; within --commit-delay a pinhole
lives in ftpgate alone, and most are used there), and every counter.
The daemon answers once it is ready (see run), and the socket is root's
alone by default.

`
