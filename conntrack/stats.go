package conntrack

// Stats counts what the tracker saw and dropped. Nothing is dropped
// without being counted here.
type Stats struct {
	Packets            uint64 `json:"packets"`          // packets handed to the tracker
	NotControl         uint64 `json:"not_control"`      // not TCP to or from a control port
	Undecodable        uint64 `json:"undecodable"`      // truncated or unknown link/network layers
	Fragments          uint64 `json:"fragments"`        // IP fragments (control traffic is never fragmented in practice)
	BadChecksums       uint64 `json:"bad_checksums"`    // IP or TCP checksum wrong: never reached the receiver's TCP
	OutOfWindow        uint64 `json:"out_of_window"`    // segments and resets outside what their receiver would accept
	AfterClose         uint64 `json:"after_close"`      // segments of control connections that had ended
	SessionsStarted    uint64 `json:"sessions_started"` // control sessions that carried FTP
	SessionsEnded      uint64 `json:"sessions_ended"`
	SessionsRefused    uint64 `json:"sessions_refused"`  // a new session found the session cap reached
	HalfOpenRefused    uint64 `json:"half_open_refused"` // a new control connection found the half-open cap reached
	HalfOpenExpired    uint64 `json:"half_open_expired"` // control connections that carried no FTP within the handshake timeout
	Lines              uint64 `json:"lines"`
	LinesTooLong       uint64 `json:"lines_too_long"`
	GapBytes           uint64 `json:"gap_bytes"`            // bytes lost (missing from the capture, or beyond a buffer limit)
	OutOfOrderDropped  uint64 `json:"out_of_order_dropped"` // out-of-order segments with no room to keep them
	Conflicts          uint64 `json:"conflicts"`            // two copies of the same bytes that differed
	Malformed          uint64 `json:"malformed"`            // data commands and replies that did not parse
	PendingOverflow    uint64 `json:"pending_overflow"`
	ChannelsOpened     uint64 `json:"channels_opened"`
	ChannelsRefused    uint64 `json:"channels_refused"`
	PinholesClosed     uint64 `json:"pinholes_closed"`
	PinholesConsumed   uint64 `json:"pinholes_consumed"` // closed by the kernel on the first packet of their connection
	SYNsHeld           uint64 `json:"syns_held"`         // data SYNs the kernel held because they beat their pinhole (inline)
	SYNsAdmitted       uint64 `json:"syns_admitted"`     // of those, admitted by ftpgate (their pinhole was open, never committed)
	SYNsRetried        uint64 `json:"syns_retried"`      // of those, sent back to the kernel, which holds their pinhole
	AddsCancelled      uint64 `json:"adds_cancelled"`    // pinholes used (a held SYN) or closed before their commit, never sent to the kernel
	CopiesLost         uint64 `json:"copies_lost"`       // NFLOG socket overflows (inline copies lost)
	BackendErrors      uint64 `json:"backend_errors"`
	LogSuppressed      uint64 `json:"log_suppressed"`      // log lines held back by the per-session limits
	DataAdmitted       uint64 `json:"data_admitted"`       // data connections the admin's ruleset let through (reported after its chains)
	AdmittedDropped    uint64 `json:"admitted_dropped"`    // used pinholes whose connection the admin's ruleset dropped
	SessionsProxied    uint64 `json:"sessions_proxied"`    // control sessions that ran through the control proxy (NAT)
	SessionsTranslated uint64 `json:"sessions_translated"` // control sessions the NAT packet path followed (rewritten in the segments)
	NATRewrites        uint64 `json:"nat_rewrites"`        // announcements rewritten for the far side of a NAT
	NATMappings        uint64 `json:"nat_mappings"`        // NAT mappings of data connections made
	ScopedOpened       uint64 `json:"scoped_opened"`       // FTPS scoped ranges opened
	ScopedRefused      uint64 `json:"scoped_refused"`      // encrypted sessions that got none (no range configured, a cap)
	NotReplyStart      uint64 `json:"not_reply_start"`     // server lines that look like replies where the server started none (after a bare LF, an echo)
	UnsolicitedAuth    uint64 `json:"unsolicited_auth"`    // 234 replies that answered no AUTH: not taken as encryption
	SessionsTracked    int    `json:"sessions_tracked"`    // now, half-open ones included
	HalfOpen           int    `json:"half_open"`           // now: control connections that have carried no FTP yet
	PinholesOpen       int    `json:"pinholes_open"`       // now
	Proxied            int    `json:"proxied"`
	Scoped             int    `json:"scoped"` // now: FTPS scoped ranges open
	// By kind (CloseReasons, RefusalReasons).
	ClosedBy       [closeKinds]uint64   `json:"-"`
	RefusedBy      [refusalKinds]uint64 `json:"-"`
	ScopedClosedBy [closeKinds]uint64   `json:"-"`
}
