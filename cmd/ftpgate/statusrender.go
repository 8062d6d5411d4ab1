package main

import (
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ftpgate/ftpgate/conntrack"
)

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
