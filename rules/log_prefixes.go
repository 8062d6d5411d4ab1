package rules

// DefaultLogGroup is the NFLOG group on which ftpgate's rules send the
// daemon what it watches: copies of FTP control segments (inline capture)
// and the first packet of each data connection that used a pinhole.
const DefaultLogGroup = 2121

// LogPrefixUsed is the log prefix of the reports of used pinholes; control
// segments are copied without a prefix.
const LogPrefixUsed = "ftpgate: pinhole used"

// LogPrefixFlush marks the record a held data SYN leaves on its way to
// the queue. It carries nothing; logging it with a queue threshold of one
// makes the kernel deliver every copy it had batched (see
// AddInlineRules), and the daemon skips it.
const LogPrefixFlush = "ftpgate: flush"

// consumedSnaplen is how much of a used pinhole's first packet is
// reported: an IPv6 header with a few extension headers and the TCP
// ports fit with room to spare.
const consumedSnaplen = 128

// LogPrefixAdmitted is the log prefix of the reports, taken after the
// admin's filter chains, of data connections that carry ftpgate's mark:
// the admin's ruleset let them through (see confirmRules).
const LogPrefixAdmitted = "ftpgate: admitted"
