package conntrack

import "testing"

// TestReasonKinds: every reason the tracker writes falls in a kind of
// its own, not in "other".
func TestReasonKinds(t *testing.T) {
	for reason, want := range map[string]string{
		"data connection started": "used", "admitted but dropped by the ruleset": "dropped_by_ruleset",
		"superseded by a new data command": "superseded", "session quit": "session_quit",
		"control connection closed": "session_closed", "control connection reset": "session_closed",
		"closed by the client": "session_closed", "control connection idle": "session_idle", "timeout": "timeout",
		"server refused PORT with 500": "server_refused", "daemon stopping": "daemon_stopping",
	} {
		if got := CloseReasons[closeKind(reason)]; got != want {
			t.Errorf("close %q: %s, want %s", reason, got, want)
		}
	}
	for reason, want := range map[string]string{
		"announced address 192.0.2.9 is not the client's control address 192.0.2.10":                    "not_announcer_address",
		"NAT suspected: announced address 198.51.100.2 is not the server's control address 203.0.113.1": "not_announcer_address",
		"announced port 80 is below the minimum data port 1024":                                         "port_below_minimum",
		"server refused PORT with 500":                                                                  "server_refused",
		"227 reply without a PASV from the client":                                                      "unsolicited_reply",
		"227 reply answers RETR, not PASV":                                                              "unsolicited_reply",
		"pairing of replies with commands is uncertain: x":                                              "pairing_uncertain",
		"active mode refused on this session: bytes from the client were lost":                          "active_distrusted",
		"more than 64 commands were waiting for a reply; this one was not kept":                         "too_many_commands",
		"227 reply answers a command past the 64 that ftpgate keeps":                                    "too_many_commands",
		"no reply from the server before the session ended":                                             "no_reply",
		"sent after AUTH, when the session became encrypted":                                            "encrypted",
		"session has reached its pinhole cap":                                                           "cap",
		"firewall backend: x":                                                                           "backend",
		"no free NAT port on 203.0.113.1 in 61000-61009":                                                "nat",
	} {
		if got := RefusalReasons[refusalKind(reason)]; got != want {
			t.Errorf("refusal %q: %s, want %s", reason, got, want)
		}
	}
}
