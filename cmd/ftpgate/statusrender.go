package main

import (
	"fmt"
	"io"
	"maps"
	"reflect"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ftpgate/ftpgate/conntrack"
)

// writeStatus prints the daemon's status as ftpgate status shows it.
// The sections share one tabwriter; each is still aligned on its own,
// since the title lines between them, which have no tab, end a block.
func writeStatus(w io.Writer, st daemonStatus) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "ftpgate %s, status at %s\n\n", st.Version, st.Time.UTC().Format(time.RFC3339))
	writeSessions(tw, st.Sessions)
	writePinholes(tw, st.Pinholes, st.Time)
	writeScoped(tw, st.Scoped)
	writeCounters(tw, st.Status)
	tw.Flush()
}

func writeSessions(tw io.Writer, sessions []conntrack.SessionStatus) {
	fmt.Fprintf(tw, "SESSIONS: %d\n", len(sessions))
	if len(sessions) == 0 {
		return
	}
	fmt.Fprintln(tw, "ID\tCLIENT\tSERVER\tAGE\tIDLE\tSTATE\tPINHOLES")
	for _, s := range sessions {
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

// writePinholes shows expiries as the time left at now, the status's own
// time: the daemon's clock, not the reader's.
func writePinholes(tw io.Writer, pinholes []conntrack.PinholeStatus, now time.Time) {
	committed := 0
	for _, p := range pinholes {
		if p.Committed {
			committed++
		}
	}
	fmt.Fprintf(tw, "\nPINHOLES: %d (%d in the kernel)\n", len(pinholes), committed)
	if len(pinholes) == 0 {
		return
	}
	fmt.Fprintln(tw, "SESSION\tCOMMAND\tPEER\tTO\tEXPIRES IN\tIN KERNEL\tPUBLIC")
	for _, p := range pinholes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\t%s\n", p.Session, p.Command, p.Peer, p.Addr,
			secs(conntrack.Seconds(p.Expires.Sub(now).Seconds())), p.Committed, publicText(p.Public))
	}
}

func writeScoped(tw io.Writer, scoped []conntrack.ScopedStatus) {
	if len(scoped) == 0 {
		return
	}
	fmt.Fprintf(tw, "\nSCOPED RANGES (FTPS): %d\n", len(scoped))
	fmt.Fprintln(tw, "SESSION\tCLIENT\tSERVER\tPORTS\tSINCE\tPUBLIC")
	for _, r := range scoped {
		ports := r.Ports
		if r.Active {
			ports += " (+ from 989)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Session, r.Client, r.Server, ports, r.Since.UTC().Format(time.TimeOnly), publicText(r.Public))
	}
}

// writeCounters prints every counter under its JSON name, so that the
// text and --format json name them alike, then the counts by reason.
func writeCounters(tw io.Writer, st conntrack.Status) {
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
		for _, k := range slices.Sorted(maps.Keys(m.by)) {
			fmt.Fprintf(tw, "%s %s\t%d\n", m.title, k, m.by[k])
		}
	}
}

// publicText is a NAT's public address, or "-" for a session not
// translated.
func publicText(public interface {
	IsValid() bool
	String() string
}) string {
	if !public.IsValid() {
		return "-"
	}
	return public.String()
}

func secs(s conntrack.Seconds) string {
	return time.Duration(float64(s) * float64(time.Second)).Round(100 * time.Millisecond).String()
}
