// Command ftpload is the load client of ftpgate's benchmark: many
// concurrent FTP control sessions, many transfers in each, every transfer
// on a new data connection, opened the instant the reply allows it.
//
//	ftpload run --server 198.51.100.20 --mode pasv --sessions 20 --transfers 500
//	ftpload idle --server 198.51.100.20 --sessions 10000 --hold 30s
//	ftpload idle-server --listen 198.51.100.20:2100
//	ftpload report results.jsonl
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: ftpload run|idle|idle-server|report [flags]  (ftpload COMMAND -h)")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = cmdRun(os.Args[2:], os.Stdout)
	case "idle":
		err = cmdIdle(os.Args[2:], os.Stdout)
	case "idle-server":
		err = cmdIdleServer(os.Args[2:])
	case "report":
		err = cmdReport(os.Args[2:], os.Stdout)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "ftpload:", err)
		os.Exit(1)
	}
}
