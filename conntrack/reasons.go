package conntrack

import "strings"

// The reasons pinholes close and channels are refused, counted by kind
// for metrics: the log lines carry the full text, with addresses, which
// would make a label of every peer.

// CloseReasons name the kinds of pinhole close, in Stats.ClosedBy order.
var CloseReasons = [...]string{
	"used", "dropped_by_ruleset", "superseded", "session_quit", "session_closed", "session_idle",
	"timeout", "server_refused", "daemon_stopping", "other",
}

// RefusalReasons name the kinds of refusal, in Stats.RefusedBy order.
var RefusalReasons = [...]string{
	"not_announcer_address", "port_below_minimum", "server_refused", "unsolicited_reply",
	"pairing_uncertain", "active_distrusted", "too_many_commands", "no_reply", "encrypted",
	"cap", "backend", "nat", "other",
}

func closeKind(reason string) int {
	switch {
	case strings.HasPrefix(reason, "data connection started"):
		return 0
	case strings.HasPrefix(reason, "admitted but dropped"):
		return 1
	case strings.HasPrefix(reason, "superseded"):
		return 2
	case reason == "session quit":
		return 3
	case strings.HasPrefix(reason, "control connection closed"), strings.HasPrefix(reason, "control connection reset"),
		strings.HasPrefix(reason, "closed by"), strings.HasPrefix(reason, "write failed"), strings.HasPrefix(reason, "read failed"),
		strings.HasPrefix(reason, "relay failed"):
		return 4
	case strings.HasPrefix(reason, "control connection idle"):
		return 5
	case reason == "timeout":
		return 6
	case strings.HasPrefix(reason, "server refused"):
		return 7
	case strings.Contains(reason, "stopping"):
		return 8
	}
	return len(CloseReasons) - 1
}

func refusalKind(reason string) int {
	switch {
	case strings.Contains(reason, "announced address"):
		return 0
	case strings.Contains(reason, "below the minimum data port"):
		return 1
	case strings.HasPrefix(reason, "server refused"):
		return 2
	case strings.Contains(reason, "commands were waiting"), strings.Contains(reason, "past the"):
		return 6
	case strings.Contains(reason, "reply without a"), strings.Contains(reason, "reply answers"):
		return 3
	case strings.HasPrefix(reason, "pairing of replies"):
		return 4
	case strings.HasPrefix(reason, "active mode refused"):
		return 5
	case strings.HasPrefix(reason, "no reply from the server"):
		return 7
	case strings.Contains(reason, "AUTH"), strings.Contains(reason, "encrypted"):
		return 8
	case strings.Contains(reason, "cap"):
		return 9
	case strings.HasPrefix(reason, "firewall backend"):
		return 10
	case strings.Contains(reason, "NAT"):
		return 11
	}
	return len(RefusalReasons) - 1
}
