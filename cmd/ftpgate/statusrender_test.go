package main

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ftpgate/ftpgate/conntrack"
)

// sampleStatus has a row of every kind writeStatus draws.
func sampleStatus() daemonStatus {
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	ap := netip.MustParseAddrPort
	a := netip.MustParseAddr
	st := daemonStatus{Version: "test", Status: conntrack.Status{
		Time: at,
		Sessions: []conntrack.SessionStatus{
			{ID: "S1", Client: ap("192.0.2.10:40000"), Server: ap("198.51.100.20:21"), Age: 12.34, Idle: 0.05, State: "clear", PickedUp: true, Pinholes: 1},
			{ID: "S2", Client: ap("[2001:db8::10]:40001"), Server: ap("[2001:db8:2::20]:21"), Age: 3, Idle: 1, State: "nat",
				ClientSeenAs: a("203.0.113.1"), ServerSeenAs: a("10.0.0.20")},
		},
		Pinholes: []conntrack.PinholeStatus{
			{Session: "S1", Command: "PASV", Peer: a("192.0.2.10"), Addr: ap("198.51.100.20:50000"), Expires: at.Add(59 * time.Second), Committed: true},
			{Session: "S2", Command: "PORT", Peer: a("10.0.0.20"), Addr: ap("192.0.2.10:50001"), Expires: at.Add(1500 * time.Millisecond), Public: ap("203.0.113.1:61000")},
		},
		Scoped: []conntrack.ScopedStatus{
			{Session: "S3", Client: a("192.0.2.11"), Server: a("198.51.100.21"), Ports: "40000-40999", Since: at.Add(-time.Minute)},
			{Session: "S4", Client: a("192.0.2.12"), Server: a("198.51.100.22"), Ports: "50000-50099", Public: a("203.0.113.1"), Active: true, Since: at},
		},
		ClosedBy:  map[string]uint64{"used": 7, "expired": 2},
		RefusedBy: map[string]uint64{"port": 1},
	}}
	st.Stats.SessionsStarted = 5
	return st
}

// TestWriteStatus: every section and every column as ftpgate status
// prints them.
func TestWriteStatus(t *testing.T) {
	var b bytes.Buffer
	writeStatus(&b, sampleStatus())
	got := b.String()
	want := `ftpgate test, status at 2025-03-01T12:00:00Z

SESSIONS: 2
ID  CLIENT                SERVER               AGE    IDLE   STATE                                                  PINHOLES
S1  192.0.2.10:40000      198.51.100.20:21     12.3s  100ms  clear (picked up)                                      1
S2  [2001:db8::10]:40001  [2001:db8:2::20]:21  3s     1s     nat (client seen as 203.0.113.1, server as 10.0.0.20)  0

PINHOLES: 2 (1 in the kernel)
SESSION  COMMAND  PEER        TO                   EXPIRES IN  IN KERNEL  PUBLIC
S1       PASV     192.0.2.10  198.51.100.20:50000  59s         true       -
S2       PORT     10.0.0.20   192.0.2.10:50001     1.5s        false      203.0.113.1:61000

SCOPED RANGES (FTPS): 2
SESSION  CLIENT      SERVER         PORTS                     SINCE     PUBLIC
S3       192.0.2.11  198.51.100.21  40000-40999               11:59:00  -
S4       192.0.2.12  198.51.100.22  50000-50099 (+ from 989)  12:00:00  203.0.113.1

COUNTERS
`
	if !strings.HasPrefix(got, want) {
		t.Errorf("writeStatus printed\n%s\nwant it to start with\n%s", got, want)
	}
	// The counters are one tabwriter block, as wide as the longest name:
	// compared word by word.
	lines := map[string]bool{}
	for _, l := range strings.Split(got[len(want):], "\n") {
		lines[strings.Join(strings.Fields(l), " ")] = true
	}
	for _, l := range []string{"sessions_started 5", "pinholes closed by expired 2", "pinholes closed by used 7", "channels refused by port 1"} {
		if !lines[l] {
			t.Errorf("writeStatus printed\n%s\nwithout the counter line %q", got, l)
		}
	}
}
