package conntrack

import "bytes"

// line is one control-channel line, without its CR LF or bare LF, and
// where it was in its direction's byte stream.
type line struct {
	text []byte
	// start and end are the sequence numbers of its first byte and of
	// the byte after its LF.
	start, end uint32
	// ack is the acknowledgement number of the segment its first byte
	// came in: how much of the other direction its sender had received
	// when it wrote the line.
	ack uint32
	// framed is false for the first line after a pickup or a gap that
	// was taken on the strength of how it looks: its real start may lie
	// in bytes ftpgate never saw.
	framed bool
	// crlf: it ended with CR LF, as RFC 959 says every line does; false:
	// with a bare LF.
	crlf bool
	// tooLong: longer than the limit, dropped whole; text is nil.
	tooLong bool
	// blanks > 0: this stands for a run of that many empty lines, whose
	// bytes are text (crlf is the last one's ending). A flood of empty
	// lines costs one call, not one per line.
	blanks int
}

// lineSplitter cuts one direction's byte stream into lines wherever they
// fall: several per segment, or one over several segments. It keeps at
// most max bytes of an unfinished line (plus a CR); a longer line is
// dropped whole, reported as tooLong at its end, and splitting resumes
// after it. No part of a line that is too long is ever parsed.
type lineSplitter struct {
	buf []byte
	max int
	// discarding: inside a line that is too long; skipping: inside bytes
	// after a pickup or a gap that do not start like a line, up to the
	// first LF.
	discarding, skipping bool
	lastCR               bool // the byte before the next one was a CR
	// unframed: the next byte is not known to start a line (a pickup or
	// a gap). lineStart says whether bytes look like the start of a
	// line of this direction.
	unframed  bool
	lineStart func([]byte) bool
	// pass, if set, receives every byte that leaves the splitter other
	// than in a line it emits: the bytes of a line too long, and those
	// skipped. The control proxy sends them on as they are.
	pass func([]byte)
	// The line being collected: where it began and whether it was framed.
	start, ack uint32
	framed     bool
}

// resync forgets any partial line: the bytes that follow are not known
// to start at a line boundary (a stream picked up mid-way, or after
// bytes were lost). Only if they do not look like the start of a line
// are they skipped up to the first LF.
func (l *lineSplitter) resync() {
	l.buf = l.buf[:0]
	l.discarding, l.skipping, l.lastCR = false, false, false
	l.unframed = true
}

// reset forgets any partial line at a point known to be a line start
// (TLS begins or ends).
func (l *lineSplitter) reset() {
	l.buf = l.buf[:0]
	l.discarding, l.skipping, l.unframed, l.lastCR = false, false, false, false
}

// empty reports whether no partial line is buffered.
func (l *lineSplitter) empty() bool {
	return len(l.buf) == 0 && !l.discarding && !l.skipping && !l.unframed
}

// held is how many bytes of an unfinished line the splitter holds.
func (l *lineSplitter) held() int { return len(l.buf) }

func (l *lineSplitter) passOn(b []byte) {
	if l.pass != nil && len(b) > 0 {
		l.pass(b)
	}
}

// blankRun measures the run of empty lines ("\n" or "\r\n") at the start
// of data: how many, how many bytes, and whether the last ended in CR LF.
func blankRun(data []byte) (n, size int, crlf bool) {
	for size < len(data) {
		switch {
		case data[size] == '\n':
			size, crlf = size+1, false
		case data[size] == '\r' && size+1 < len(data) && data[size+1] == '\n':
			size, crlf = size+2, true
		default:
			return n, size, crlf
		}
		n++
	}
	return n, size, crlf
}

// feed hands each complete line of data, which starts at sequence number
// seq and came in a segment acknowledging ack, to emit. emit may stop the
// splitting early by returning false; the rest of data and its sequence
// number are then returned unconsumed, as when the session switches to
// TLS mid-segment.
func (l *lineSplitter) feed(data []byte, seq, ack uint32, emit func(line) bool) (rest []byte, restSeq uint32) {
	for len(data) > 0 {
		switch {
		case l.unframed:
			l.pickUp(data, seq, ack)
		case len(l.buf) == 0 && !l.discarding && !l.skipping:
			l.start, l.ack, l.framed = seq, ack, true
			if size, ok := l.blanks(data, seq, ack, emit); size > 0 {
				data, seq = data[size:], seq+uint32(size)
				if !ok {
					return data, seq
				}
				continue
			}
		}
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			l.hold(data)
			return nil, seq + uint32(len(data))
		}
		taken := data[:i+1]
		data, seq = data[i+1:], seq+uint32(i+1)
		if !l.endLine(taken, seq, emit) {
			return data, seq
		}
	}
	return nil, seq
}

// pickUp starts on bytes not known to start a line: a line, unframed,
// if they look like one; otherwise they are skipped up to the first LF.
func (l *lineSplitter) pickUp(data []byte, seq, ack uint32) {
	l.unframed = false
	if l.lineStart != nil && !l.lineStart(data) {
		l.skipping = true
	} else {
		l.start, l.ack, l.framed = seq, ack, false
	}
}

// blanks emits the run of empty lines that data starts with, if any, as
// one line: size is its length (0: there was none), ok emit's answer.
func (l *lineSplitter) blanks(data []byte, seq, ack uint32, emit func(line) bool) (size int, ok bool) {
	n, size, crlf := blankRun(data)
	if n == 0 {
		return 0, true
	}
	return size, emit(line{text: data[:size], blanks: n, crlf: crlf, start: seq, end: seq + uint32(size), ack: ack, framed: true})
}

// hold keeps data, which holds no LF, as the start of a line still to
// end, or passes it on: bytes skipped, or a line grown too long.
func (l *lineSplitter) hold(data []byte) {
	switch {
	case l.discarding || l.skipping:
		l.passOn(data)
	case len(l.buf)+len(data) > l.max+1: // +1: a CR before the LF to come
		l.passOn(l.buf)
		l.passOn(data)
		l.buf = l.buf[:0]
		l.discarding = true
	default:
		l.buf = append(l.buf, data...)
	}
	l.lastCR = data[len(data)-1] == '\r'
}

// endLine takes the bytes up to and with an LF, which end the line
// being collected, or the bytes being skipped; end is the sequence
// number after the LF. It reports emit's answer.
func (l *lineSplitter) endLine(taken []byte, end uint32, emit func(line) bool) bool {
	chunk := taken[:len(taken)-1]
	i := len(chunk)
	crlf := i > 0 && chunk[i-1] == '\r' || i == 0 && l.lastCR
	l.lastCR = false
	if l.skipping {
		l.skipping = false
		l.passOn(taken)
		return true
	}
	textLen := len(l.buf) + len(chunk)
	if crlf {
		textLen--
	}
	if l.discarding || textLen > l.max {
		return l.endTooLong(taken, crlf, end, emit)
	}
	text := chunk
	if len(l.buf) > 0 {
		l.buf = append(l.buf, chunk...)
		text = l.buf
	}
	if crlf {
		text = text[:len(text)-1]
	}
	ok := emit(line{text: text, crlf: crlf, start: l.start, end: end, ack: l.ack, framed: l.framed})
	l.buf = l.buf[:0]
	return ok
}

// endTooLong ends a line too long: every byte of it is passed on, and
// it is emitted without them (tooLong), so that none is ever parsed.
func (l *lineSplitter) endTooLong(taken []byte, crlf bool, end uint32, emit func(line) bool) bool {
	if !l.discarding {
		l.passOn(l.buf) // held while it might still have fitted
	}
	l.discarding = false
	l.buf = l.buf[:0]
	l.passOn(taken)
	return emit(line{tooLong: true, crlf: crlf, start: l.start, end: end, ack: l.ack, framed: l.framed})
}

// looksLikeCommand reports whether b starts like a client command: a verb
// of three or four letters, then a space or the end of the line.
func looksLikeCommand(b []byte) bool {
	n := 0
	for n < len(b) && n < 5 && isLetter(b[n]) {
		n++
	}
	if n < 3 || n > 4 {
		return false
	}
	return n == len(b) || b[n] == ' ' || b[n] == '\r' || b[n] == '\n'
}

// looksLikeReply reports whether b starts like a reply line: three digits,
// the first 1-5, then a space, a hyphen or the end of the line.
func looksLikeReply(b []byte) bool {
	if len(b) < 3 || b[0] < '1' || b[0] > '5' || !isDigit(b[1]) || !isDigit(b[2]) {
		return false
	}
	return len(b) == 3 || b[3] == ' ' || b[3] == '-' || b[3] == '\r' || b[3] == '\n'
}

func isLetter(c byte) bool { return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' }
func isDigit(c byte) bool  { return c >= '0' && c <= '9' }
