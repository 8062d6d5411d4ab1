package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ftpgate/ftpgate/capture"
	"github.com/ftpgate/ftpgate/conntrack"
	"github.com/ftpgate/ftpgate/report"
	"github.com/ftpgate/ftpgate/rules"
	flag "github.com/spf13/pflag"
)

// analyzeVars are analyze's flags.
type analyzeVars struct {
	fs     *flag.FlagSet
	tf     trackerFlags
	format *string
	html   *string
}

func newAnalyzeVars() *analyzeVars {
	av := &analyzeVars{fs: newFlagSet("analyze")}
	av.tf.register(av.fs, "error")
	av.format = av.fs.String("format", "json", "output: json (one object per line per data channel and per encrypted session) or text (a table)")
	av.html = av.fs.StringP("html", "", "", "also write the report of the captures, a sequence diagram per session, to this `FILE` (one self-contained HTML page)")
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
	if fs.NArg() == 0 {
		return usagef("no capture file given")
	}
	if *format != "json" && *format != "text" {
		return fmt.Errorf("--format %q: want json or text", *format)
	}
	var rep *report.Report
	if *av.html != "" {
		rep = report.New(report.Options{Title: "ftpgate analyze: " + strings.Join(baseNames(fs.Args()), ", "),
			Source:      "Decisions ftpgate would have taken on " + strings.Join(fs.Args(), ", ") + " (a dry run: nothing was opened).",
			MaxSessions: 1 << 20})
	}
	out := &analyzeOutput{json: *format == "json", enc: json.NewEncoder(stdout)}
	cfg.Observe(out)
	cfg.ConsumeOnSYN = true
	if rep != nil {
		cfg.Observe(rep)
	}
	for _, file := range fs.Args() {
		if err := analyzeFile(file, cfg); err != nil {
			return err
		}
	}
	if *format == "text" {
		writeTable(stdout, out.rows)
	}
	if rep != nil {
		if err := rep.WriteFile(*av.html); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "ftpgate analyze: wrote the report to %s\n", *av.html)
	}
	return nil
}

// analyzeFile replays one capture through a tracker of its own.
func analyzeFile(file string, cfg conntrack.Config) error {
	src, err := capture.OpenFile(file)
	if err != nil {
		return err
	}
	defer src.Close()
	if err := replay(conntrack.NewTracker(cfg, rules.NewDryRun()), src); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	return nil
}

func baseNames(paths []string) []string {
	out := make([]string, len(paths))
	for i, p := range paths {
		out[i] = filepath.Base(p)
	}
	return out
}

// tableRow is one row of analyze's text table: an announced channel or
// an encrypted session.
type tableRow struct {
	time                                                              time.Time
	session, client, server, command, mode, from, to, verdict, reason string
}

func channelRow(c conntrack.Channel) tableRow {
	mode := "active (server connects)"
	if c.Passive {
		mode = "passive (client connects)"
	}
	verdict := "would open"
	if c.Verdict != conntrack.VerdictOpen {
		verdict = "refused"
	}
	return tableRow{time: c.Time, session: c.Session, client: c.Client.String(), server: c.Server.String(), command: c.Command.String(),
		mode: mode, from: c.OrigH.String(), to: netip.AddrPortFrom(c.RespH, c.RespP).String(), verdict: verdict, reason: c.Reason}
}

func encryptedRow(e conntrack.EncryptedSession) tableRow {
	r := encryptedRecord(e)
	command, reason := "AUTH", "the control channel is encrypted (explicit FTPS): no announcement can be read"
	at := e.AuthAt
	if e.Implicit {
		command, reason, at = "(TLS)", "the control channel is encrypted from the first byte (implicit FTPS): no announcement can be read", e.Start
	}
	if r.CCCAt != "" {
		reason += "; clear text again after CCC at " + e.CCCAt.UTC().Format(time.TimeOnly+".000")
	}
	if at.IsZero() {
		at = e.Start
	}
	return tableRow{time: at, session: e.Session, client: r.Client, server: r.Server, command: command,
		mode: "encrypted", from: "-", to: "-", verdict: "hidden", reason: reason}
}

func writeTable(w io.Writer, rows []tableRow) {
	slices.SortStableFunc(rows, func(a, b tableRow) int { return a.time.Compare(b.time) })
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tSESSION\tCLIENT\tSERVER\tCOMMAND\tMODE\tCONNECTS FROM\tTO\tVERDICT\tREASON")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.time.UTC().Format(time.TimeOnly+".000"),
			r.session, r.client, r.server, r.command, r.mode, r.from, r.to, r.verdict, r.reason)
	}
	tw.Flush()
	if len(rows) == 0 {
		fmt.Fprintln(w, "(no data channel announced and no encrypted session)")
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
const analyzeDescription = `Reads pcap or pcapng captures (Ethernet, Linux cooked, DLT_NULL or raw IP)
through the same reassembly, parser and policy as 'ftpgate run', with a
dry-run firewall: nothing is opened. It prints every announced data channel
with the decision the daemon would have taken, and every session that went
encrypted (FTPS), where no helper can read an announcement.

JSON (the default): one object per line. A channel's fields follow Zeek's
ftp data_channel: ts, session, command, passive (true: passive mode, the
client connects; false: active mode, the server connects back), orig_h (the
host that would connect), resp_h and resp_p (where it would connect: the
announced address and port), verdict ("open": ftpgate would have opened a
pinhole for exactly that connection; "refuse": it would not, and reason says
why), reason, and client and server (the control connection). An encrypted
session is {"record":"encrypted", "tls":"explicit" or "implicit", auth_at,
ccc_at, ...}.

--format text: the same as a table, one row per channel or encrypted
session, in time order.

--html FILE: also a report for people, one self-contained HTML page: a
summary, and a sequence diagram per session (client, firewall, server;
every command and reply, each announcement decoded, the decision, and the
data connection in the direction it went). Passwords are not shown. Logs go
to standard error.

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

// analyzeOutput writes what analyze finds: a JSON record per channel and
// encrypted session as it comes, or the rows of a table.
type analyzeOutput struct {
	conntrack.NopObserver
	json bool
	enc  *json.Encoder
	rows []tableRow
}

func (o *analyzeOutput) Channel(c conntrack.Channel) {
	if o.json {
		_ = o.enc.Encode(c)
		return
	}
	o.rows = append(o.rows, channelRow(c))
}

func (o *analyzeOutput) Encrypted(e conntrack.EncryptedSession) {
	if o.json {
		_ = o.enc.Encode(encryptedRecord(e))
		return
	}
	o.rows = append(o.rows, encryptedRow(e))
}
