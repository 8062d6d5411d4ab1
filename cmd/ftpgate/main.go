// Command ftpgate lets FTP through default-drop nftables firewalls by
// opening one pinhole per negotiated data connection.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	flag "github.com/spf13/pflag"
)

const usage = `ftpgate lets FTP through a default-drop nftables firewall: it watches the FTP
control connections, parses every PORT/EPRT/LPRT command and 227/228/229
reply, and opens an nftables pinhole for exactly the data connection that
was negotiated (peer, address, port), then closes it again.

Usage:
  ftpgate run [flags]            watch live traffic and program nftables (root)
  ftpgate status [flags]         show the running daemon's sessions, pinholes and counters
  ftpgate analyze [flags] FILE   list the data channels announced in a pcap/pcapng
  ftpgate kernel                 say what this kernel lets ftpgate do (root)
  ftpgate version                print the version

Run 'ftpgate COMMAND --help' for the flags of a command; 'man ftpgate' has it all.

Your ruleset needs one line, before its drop, to admit what ftpgate marks:

  ct mark & 0x01000000 == 0x01000000 accept
`

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "run":
		err = cmdRun(args[1:], stdout, stderr)
	case "analyze":
		err = cmdAnalyze(args[1:], stdout, stderr)
	case "status":
		err = cmdStatus(args[1:], stdout)
	case "kernel":
		err = cmdKernel(args[1:], stdout, stderr)
	case "manpage":
		err = cmdManpage(stdout)
	case "version", "--version":
		fmt.Fprintln(stdout, "ftpgate", version)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "ftpgate: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "ftpgate %s: %v\nsee 'ftpgate %s --help'\n", args[0], err, args[0])
		return 2
	}
	fmt.Fprintf(stderr, "ftpgate %s: %v\n", args[0], err)
	return 1
}
