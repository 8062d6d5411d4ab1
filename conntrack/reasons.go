package conntrack

// The reasons pinholes close and channels are refused are typed where
// they happen: a kind, counted for metrics and read by the report, and a
// text with addresses for people. Nothing reads the text back.

// CloseKind is why a pinhole (or a scoped range) closed.
type CloseKind uint8

const (
	closedUsed CloseKind = iota
	closedDroppedByRuleset
	closedSuperseded
	closedQuit
	closedSessionClosed
	closedSessionIdle
	closedTimeout
	closedServerRefused
	closedStopping
	closedReload
	closedNotTLS
	closedCCC
	closedOther
	closeKinds
)

// CloseReasons name the kinds of close, in Stats.ClosedBy order.
var CloseReasons = [closeKinds]string{
	"used", "dropped_by_ruleset", "superseded", "session_quit", "session_closed", "session_idle",
	"timeout", "server_refused", "daemon_stopping", "reload", "not_tls", "ccc", "other",
}

func (k CloseKind) String() string {
	if k < closeKinds {
		return CloseReasons[k]
	}
	return "other"
}

// RefusalKind is why an announced channel was not opened.
type RefusalKind uint8

const (
	refusedNotAnnouncer RefusalKind = iota
	refusedLowPort
	refusedByServer
	refusedUnsolicited
	refusedPairingUncertain
	refusedActiveDistrusted
	refusedTooManyCommands
	refusedNoReply
	refusedEncrypted
	refusedCap
	refusedBackend
	refusedNAT
	refusedNotServed
	refusedLocalSocket
	refusedSuperseded
	refusedOther
	refusalKinds
)

// RefusalReasons name the kinds of refusal, in Stats.RefusedBy order.
var RefusalReasons = [refusalKinds]string{
	"not_announcer_address", "port_below_minimum", "server_refused", "unsolicited_reply",
	"pairing_uncertain", "active_distrusted", "too_many_commands", "no_reply", "encrypted",
	"cap", "backend", "nat", "not_served", "local_socket", "superseded", "other",
}

func (k RefusalKind) String() string {
	if k < refusalKinds {
		return RefusalReasons[k]
	}
	return "other"
}
