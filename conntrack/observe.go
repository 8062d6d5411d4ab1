package conntrack

import (
	"net/netip"
	"time"

	"github.com/ftpgate/ftpgate/rules"
)

// ControlLine is one clear-text line of a control session, as the
// tracker parsed it.
type ControlLine struct {
	Time       time.Time
	Session    string
	Client     netip.AddrPort
	Server     netip.AddrPort
	FromServer bool
	// Text is the line without CR LF; it is only valid during the call.
	Text []byte
}

// ChannelClosed is the end of an opened channel's pinhole: its data
// connection started (Started), or it closed unused for Reason.
type ChannelClosed struct {
	Channel Channel
	At      time.Time
	Kind    CloseKind
	Reason  string
	Started bool
}

// SessionEnd is the end of a control session that carried FTP.
type SessionEnd struct {
	Session string
	Client  netip.AddrPort
	Server  netip.AddrPort
	Start   time.Time
	End     time.Time
	Reason  string
}

func (s *Session) observeLine(fromServer bool, text []byte) {
	if f := s.env.cfg.OnLine; f != nil {
		f(ControlLine{Time: s.env.now, Session: s.ID, Client: s.Client, Server: s.Server, FromServer: fromServer, Text: text})
	}
}

func (s *Session) observeEnd(reason string) {
	if f := s.env.cfg.OnSessionEnd; f != nil && s.established {
		f(SessionEnd{Session: s.ID, Client: s.Client, Server: s.Server, Start: s.Start, End: s.env.now, Reason: reason})
	}
}

func (t *Tracker) observeClosed(p *pinhole, kind CloseKind, reason string, at time.Time) {
	if f := t.cfg.OnChannelClosed; f != nil {
		f(ChannelClosed{Channel: p.channel, At: at, Kind: kind, Reason: reason, Started: kind == closedUsed})
	}
}

const reasonUsedAfterClose = "its data connection had started before ftpgate closed it"

// consumeOnSYN uses the pinhole a data SYN matches, where no kernel
// does (Config.ConsumeOnSYN).
func (t *Tracker) consumeOnSYN(seg *segment) {
	if !seg.has(flagSYN) || seg.has(flagACK) {
		return
	}
	key := rules.Pinhole{Peer: seg.src.Addr(), Addr: seg.dst.Addr(), Port: seg.dst.Port()}
	_, open := t.pinholes[key]
	if open {
		t.PinholeConsumed(key)
	}
	if f := t.cfg.OnDataSYN; f != nil {
		f(DataSYN{Time: t.now, From: seg.src, To: seg.dst, Admitted: open})
	}
}

// DataSYN is a connection attempt to a port that is not a control port,
// seen by analyze: Admitted if it used a pinhole, else the firewall would
// have dropped it (unless the admin's ruleset admits it otherwise).
type DataSYN struct {
	Time     time.Time
	From, To netip.AddrPort
	Admitted bool
}
