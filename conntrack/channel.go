package conntrack

import (
	"encoding/json"
	"net/netip"
	"time"

	"github.com/ftpgate/ftpgate/parser"
	"github.com/ftpgate/ftpgate/rules"
)

// Verdict is what the policy decided for an announced data channel.
type Verdict uint8

const (
	VerdictOpen   Verdict = iota + 1 // a pinhole was opened
	VerdictRefuse                    // no pinhole; Reason says why
)

func (v Verdict) String() string {
	switch v {
	case VerdictOpen:
		return "open"
	case VerdictRefuse:
		return "refuse"
	}
	return "unknown"
}

// MarshalText makes a Verdict appear as "open" or "refuse" in JSON.
func (v Verdict) MarshalText() ([]byte, error) { return []byte(v.String()), nil }

// Channel is one data channel announced on a control session, with the
// policy's verdict. Field names follow Zeek's ftp data_channel record.
type Channel struct {
	Time    time.Time   // when the announcement was seen
	Session string      // stable session id
	Command parser.Verb // PORT, EPRT, LPRT, PASV, EPSV, LPSV
	Passive bool        // the client connects (PASV, EPSV, LPSV)
	OrigH   netip.Addr  // the host that will open the data connection
	RespH   netip.Addr  // the announced address (for 229: the control server)
	RespP   uint16      // the announced port
	Verdict Verdict
	Reason  string
	Refusal RefusalKind    // for a refusal: its kind
	Client  netip.AddrPort // control connection client
	Server  netip.AddrPort // control connection server
	// Through NAT (sessions of the control proxy): what the far side was
	// told, if it differs from the announcement, and where its data
	// connection is mapped to.
	Sent     netip.AddrPort
	MappedTo netip.AddrPort
	// Seen: for a refusal on a proxied session, the announcer's address
	// as the far side sees it.
	Seen netip.AddrPort
}

// Pinhole is the exact hole this channel needs.
func (c Channel) Pinhole() rules.Pinhole {
	return rules.Pinhole{Peer: c.OrigH, Addr: c.RespH, Port: c.RespP}
}

// MarshalJSON writes the Zeek-like record used by `ftpgate analyze`.
func (c Channel) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		TS      string  `json:"ts"`
		Session string  `json:"session"`
		Command string  `json:"command"`
		Passive bool    `json:"passive"`
		OrigH   string  `json:"orig_h"`
		RespH   string  `json:"resp_h"`
		RespP   uint16  `json:"resp_p"`
		Verdict Verdict `json:"verdict"`
		Reason  string  `json:"reason"`
		Client  string  `json:"client"`
		Server  string  `json:"server"`
	}{
		TS: c.Time.UTC().Format(time.RFC3339Nano), Session: c.Session, Command: c.Command.String(),
		Passive: c.Passive, OrigH: c.OrigH.String(), RespH: c.RespH.String(), RespP: c.RespP,
		Verdict: c.Verdict, Reason: c.Reason, Client: c.Client.String(), Server: c.Server.String(),
	})
}

// activeChannel builds the record of an active-mode announcement: the
// server will connect to the address the client wrote.
func activeChannel(s *Session, cmd parser.Command, ts time.Time) Channel {
	return Channel{
		Time: ts, Session: s.ID, Command: cmd.Verb, Passive: false,
		OrigH: s.Server.Addr(), RespH: cmd.Endpoint.Addr(), RespP: cmd.Endpoint.Port(),
		Client: s.Client, Server: s.Server,
	}
}
