package conntrack

import "bytes"

// eolMode is how a server ends its lines, learnt from the last line of
// its first reply (its greeting): inner lines of a multi-line banner may
// come from a file written with bare LFs even where the server ends its
// own lines with CR LF.
type eolMode uint8

const (
	eolUnknown eolMode = iota
	// eolCRLF: CR LF, as RFC 959 asks. A bare LF in a reply is then
	// text inside the line (a server echoing a client's argument), and
	// what follows it cannot start a reply.
	eolCRLF
	// eolLF: a server that ends lines with a bare LF. Every LF ends a
	// line, so an echo of a client's argument cannot be told from a
	// reply: once the client has sent something that looks like a reply,
	// nothing of the session opens (see echoGuard.atRisk).
	eolLF
)

// echoGuard keeps a server's echo of its client's text from passing for
// a reply: it learns how the server ends its lines, whether its latest
// line ended where a reply cannot start, and whether the client ever sent
// text that looks like a reply.
type echoGuard struct {
	// eol: how the server ends its lines; continues: its last line
	// ended in a bare LF although it ends lines with CR LF, so the next
	// line continues a reply and starts none.
	eol       eolMode
	continues bool
	// replyLike: the client sent text that looks like a reply; echoed:
	// to a server that ends lines with a bare LF (or has not said yet),
	// so that nothing of the session opens.
	replyLike, echoed bool
}

// serverLineEnded notes how a server line ended: whether the next can
// start a reply.
func (g *echoGuard) serverLineEnded(l line) {
	g.continues = g.eol == eolCRLF && !l.crlf
}

// learn learns how the server ends its lines from the line that ends its
// first reply; it reports whether it learnt it now.
func (g *echoGuard) learn(l line) bool {
	if g.eol != eolUnknown || !l.framed {
		return false
	}
	g.eol = eolLF
	if l.crlf {
		g.eol = eolCRLF
	}
	return true
}

// clientSent notes a client line that holds what looks like a reply
// line: at its start, or after a CR or a NUL, which some servers turn
// into line ends when they echo an argument. No real client sends one.
// It reports whether this is the first.
func (g *echoGuard) clientSent(text []byte) bool {
	for !g.replyLike && len(text) > 0 {
		if looksLikeReply(text) {
			g.replyLike = true
			return true
		}
		i := bytes.IndexAny(text, "\r\x00")
		if i < 0 {
			return false
		}
		text = text[i+1:]
	}
	return false
}

// atRisk reports, once, that the session's server may echo its client's
// reply-like text as a line like any reply: the client sent some, and
// the server ends lines with a bare LF or has not said yet.
func (g *echoGuard) atRisk() bool {
	if !g.replyLike || g.eol == eolCRLF || g.echoed {
		return false
	}
	g.echoed = true
	return true
}
