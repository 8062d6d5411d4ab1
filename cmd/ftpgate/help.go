package main

import (
	"fmt"
	"io"
	"strings"

	flag "github.com/spf13/pflag"
)

// command is one subcommand's help: `ftpgate CMD --help` and its section
// of the man page are written from the same text and the same flags.
type command struct {
	name, synopsis, description string
	flags                       func() *flag.FlagSet
}

var (
	runCommand     = command{"run", "ftpgate run [flags]", runDescription, func() *flag.FlagSet { return newRunVars().fs }}
	statusCommand  = command{"status", "ftpgate status [flags]", statusDescription, statusFlags}
	analyzeCommand = command{"analyze", "ftpgate analyze [flags] CAPTURE...", analyzeDescription, analyzeFlags}
	kernelCommand  = command{"kernel", "ftpgate kernel [flags]", kernelDescription, kernelFlags}
	commands       = []command{runCommand, statusCommand, analyzeCommand, kernelCommand}
)

func writeHelp(w io.Writer, c command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: %s\n\n%s\nFlags:\n%s", c.synopsis, c.description, fs.FlagUsages())
}

// cmdManpage writes ftpgate(8) in roff (make install puts it in place).
func cmdManpage(w io.Writer) error {
	esc := func(s string) string {
		s = strings.ReplaceAll(s, `\`, `\e`)
		var b strings.Builder
		for _, l := range strings.Split(s, "\n") {
			if strings.HasPrefix(l, ".") || strings.HasPrefix(l, "'") {
				l = `\&` + l
			}
			b.WriteString(strings.ReplaceAll(l, "-", `\-`) + "\n")
		}
		return b.String()
	}
	para := func(text string) string {
		var b strings.Builder
		for _, p := range strings.Split(strings.TrimSpace(text), "\n\n") {
			if strings.HasPrefix(p, "  ") || strings.Contains(p, "\n  ") { // an indented example or list
				b.WriteString(".PP\n.RS\n.nf\n" + esc(p) + ".fi\n.RE\n")
				continue
			}
			b.WriteString(".PP\n" + esc(p))
		}
		return b.String()
	}
	fmt.Fprintf(w, ".TH FTPGATE 8 \"\" \"ftpgate %s\" \"System Administration\"\n", version)
	fmt.Fprint(w, ".SH NAME\nftpgate \\- FTP data channels through a default-drop nftables firewall, one pinhole each\n")
	fmt.Fprint(w, ".SH SYNOPSIS\n")
	for _, c := range commands {
		fmt.Fprintf(w, ".B %s\n.br\n", esc(strings.TrimSuffix(c.synopsis, "\n")))
	}
	fmt.Fprint(w, ".SH DESCRIPTION\n"+para(usage))
	for _, c := range commands {
		fmt.Fprintf(w, ".SH %s\n%s", strings.ToUpper("ftpgate "+c.name), para(c.description))
		fmt.Fprint(w, ".SS Flags\n")
		c.flags().VisitAll(func(f *flag.Flag) {
			name, use := flag.UnquoteUsage(f)
			arg := ""
			if name != "" {
				arg = " " + name
			}
			def := ""
			if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "[]" {
				def = fmt.Sprintf(" (default %s)", f.DefValue)
			}
			fmt.Fprintf(w, ".TP\n.B \\-\\-%s%s\n%s", esc(f.Name)[:len(esc(f.Name))-1], esc(arg)[:len(esc(arg))-1], esc(use+def))
		})
	}
	fmt.Fprint(w, ".SH FILES\n.TP\n.I /etc/ftpgate/ftpgate.toml\nthe configuration (keys are the flags of ftpgate run; [[server]] tables)\n"+
		".TP\n.I /run/ftpgate/status.sock\nthe status socket\n.SH SIGNALS\n.TP\n.B SIGHUP\nreload the configuration\n"+
		".TP\n.B SIGINT, SIGTERM\nclose every pinhole, remove the table, exit 0\n.SH SEE ALSO\n.BR nft (8),\n.BR conntrack (8)\n")
	return nil
}
