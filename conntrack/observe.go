package conntrack

import (
	"net/netip"
	"time"
)

// Observer is told each session's story as the tracker sees it: for the
// report (report.Report), for analyze, for tests. Its methods run on the
// tracker's goroutine, in the order things happened.
type Observer interface {
	// Channel: an announced data channel, with its verdict.
	Channel(Channel)
	// ChannelClosed: the end of an opened channel's pinhole.
	ChannelClosed(ChannelClosed)
	// Line: a clear-text control line; its Text is valid only during the
	// call.
	Line(ControlLine)
	// SessionEnd: a control session that carried FTP ended.
	SessionEnd(SessionEnd)
	// Encrypted: a session that went encrypted, at its end.
	Encrypted(EncryptedSession)
	// DataSYN: a connection attempt to a port that is not a control
	// port, seen when Config.ConsumeOnSYN is set (analyze).
	DataSYN(DataSYN)
}

// NopObserver is told nothing; embed it to observe only some of it.
type NopObserver struct{}

func (NopObserver) Channel(Channel)             {}
func (NopObserver) ChannelClosed(ChannelClosed) {}
func (NopObserver) Line(ControlLine)            {}
func (NopObserver) SessionEnd(SessionEnd)       {}
func (NopObserver) Encrypted(EncryptedSession)  {}
func (NopObserver) DataSYN(DataSYN)             {}

// Observers tells each of its observers everything, in order.
type Observers []Observer

func (o Observers) Channel(c Channel) {
	for _, x := range o {
		x.Channel(c)
	}
}

func (o Observers) ChannelClosed(c ChannelClosed) {
	for _, x := range o {
		x.ChannelClosed(c)
	}
}

func (o Observers) Line(l ControlLine) {
	for _, x := range o {
		x.Line(l)
	}
}

func (o Observers) SessionEnd(e SessionEnd) {
	for _, x := range o {
		x.SessionEnd(e)
	}
}

func (o Observers) Encrypted(e EncryptedSession) {
	for _, x := range o {
		x.Encrypted(e)
	}
}

func (o Observers) DataSYN(d DataSYN) {
	for _, x := range o {
		x.DataSYN(d)
	}
}

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

// DataSYN is a connection attempt to a port that is not a control port,
// seen by analyze: Admitted if it used a pinhole, else the firewall would
// have dropped it (unless the admin's ruleset admits it otherwise).
type DataSYN struct {
	Time     time.Time
	From, To netip.AddrPort
	Admitted bool
}

// EncryptedSession is the record `ftpgate analyze` gives of a session
// that went encrypted: where an FTP helper goes blind.
type EncryptedSession struct {
	Session  string
	Client   netip.AddrPort
	Server   netip.AddrPort
	Implicit bool      // FTPS from the first byte (port 990)
	Start    time.Time // when the session began
	AuthAt   time.Time // explicit: when the server accepted AUTH
	CCCAt    time.Time // when it returned to clear text, if it did
	End      time.Time
}
