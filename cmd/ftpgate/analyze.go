package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ftpgate/ftpgate/capture"
	"github.com/ftpgate/ftpgate/conntrack"
	"github.com/ftpgate/ftpgate/rules"
	flag "github.com/spf13/pflag"
)

// analyzeVars are analyze's flags.
type analyzeVars struct {
	fs     *flag.FlagSet
	tf     trackerFlags
	format *string
}

func newAnalyzeVars() *analyzeVars {
	av := &analyzeVars{fs: newFlagSet("analyze")}
	av.tf.register(av.fs, "error")
	av.format = av.fs.String("format", "json", "output: json (one object per line per data channel) or text (a table)")
	return av
}

func analyzeFlags() *flag.FlagSet { return newAnalyzeVars().fs }

func cmdAnalyze(args []string, stdout, stderr io.Writer) error {
	av := newAnalyzeVars()
	fs, tf, format := av.fs, &av.tf, av.format
	help := func(w io.Writer) { writeHelp(w, analyzeCommand, fs) }
	_, cfg, err := tf.parse(fs, args, help, stdout, stderr)
	if err != nil {
		return err
	}
	switch fs.NArg() {
	case 1:
	case 0:
		return usagef("no capture file given")
	default:
		return usagef("one capture file at a time, got %d: %s", fs.NArg(), strings.Join(fs.Args(), " "))
	}
	if *format != "json" && *format != "text" {
		return fmt.Errorf("--format %q: want json or text", *format)
	}
	src, err := capture.OpenFile(fs.Arg(0))
	if err != nil {
		return err
	}
	defer src.Close()

	var channels []conntrack.Channel
	enc := json.NewEncoder(stdout)
	cfg.OnChannel = func(c conntrack.Channel) {
		if *format == "json" {
			_ = enc.Encode(c)
			return
		}
		channels = append(channels, c)
	}
	var encrypted []conntrack.EncryptedSession
	cfg.OnEncrypted = func(e conntrack.EncryptedSession) {
		if *format == "json" {
			_ = enc.Encode(encryptedRecord(e))
			return
		}
		encrypted = append(encrypted, e)
	}
	tr := conntrack.NewTracker(cfg, rules.NewDryRun())
	if err := replay(tr, src); err != nil {
		return err
	}
	if *format == "text" {
		writeTable(stdout, channels)
		if len(encrypted) > 0 {
			writeEncrypted(stdout, encrypted)
		}
	}
	return nil
}

func writeTable(w io.Writer, channels []conntrack.Channel) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tSESSION\tCOMMAND\tMODE\tCONNECTS FROM\tTO\tVERDICT\tREASON")
	for _, c := range channels {
		mode := "active"
		if c.Passive {
			mode = "passive"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.Time.UTC().Format(time.TimeOnly+".000"),
			c.Session, c.Command, mode, c.OrigH, netip.AddrPortFrom(c.RespH, c.RespP), c.Verdict, c.Reason)
	}
	tw.Flush()
	if len(channels) == 0 {
		fmt.Fprintln(w, "(no data channel announced)")
	}
}

// replay feeds every packet of a capture file to the tracker, by packet
// time, and ends every session at the end: the same pipeline as the
// daemon's, with a dry-run firewall.
func replay(tr *conntrack.Tracker, src capture.Source) error {
	var ferr error
	for ferr == nil {
		err := src.Read(func(p *capture.Packet) { ferr = tr.Feed(p.Data, p.Link, p.Time) })
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
	}
	if ferr != nil {
		return ferr
	}
	tr.CloseAll("end of capture")
	return tr.Commit()
}

// analyzeDescription is analyze's help, and its part of the man page.
const analyzeDescription = `Reads a pcap or pcapng capture (Ethernet, Linux cooked, DLT_NULL or raw IP)
through the same reassembly, parser and policy as 'ftpgate run', with a
dry-run firewall, and prints every announced data channel with the verdict
the daemon would have given: one JSON object per line (fields after Zeek's
ftp data_channel: ts, session, command, passive, orig_h, resp_h, resp_p,
verdict, reason, plus client and server of the control connection), or a
table with --format text. Logs go to standard error.

`

// encryptedJSON is analyze's record of a session that went encrypted:
// from then on a helper sees no announcement.
type encryptedJSON struct {
	TS      string `json:"ts"`
	Session string `json:"session"`
	Record  string `json:"record"` // "encrypted"
	TLS     string `json:"tls"`    // explicit (AUTH) or implicit (port 990)
	AuthAt  string `json:"auth_at,omitempty"`
	CCCAt   string `json:"ccc_at,omitempty"`
	End     string `json:"end"`
	Client  string `json:"client"`
	Server  string `json:"server"`
}

func encryptedRecord(e conntrack.EncryptedSession) encryptedJSON {
	ts := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format(time.RFC3339Nano)
	}
	mode := "explicit"
	if e.Implicit {
		mode = "implicit"
	}
	return encryptedJSON{TS: ts(e.Start), Session: e.Session, Record: "encrypted", TLS: mode, AuthAt: ts(e.AuthAt),
		CCCAt: ts(e.CCCAt), End: ts(e.End), Client: e.Client.String(), Server: e.Server.String()}
}

func writeEncrypted(w io.Writer, es []conntrack.EncryptedSession) {
	fmt.Fprintln(w, "\nENCRYPTED SESSIONS (no announcement visible while encrypted)")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SESSION\tTLS\tCLIENT\tSERVER\tAUTH AT\tCCC AT")
	for _, e := range es {
		r := encryptedRecord(e)
		cc := r.CCCAt
		if cc == "" {
			cc = "-"
		}
		au := r.AuthAt
		if au == "" {
			au = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Session, r.TLS, r.Client, r.Server, au, cc)
	}
	tw.Flush()
}
