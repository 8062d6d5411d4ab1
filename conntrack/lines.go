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
}

// lineSplitter cuts one direction's byte stream into lines wherever they
// fall: several per segment, or one over several segments. It keeps at
// most max bytes of an unfinished line (plus a CR); a longer line is
// dropped whole and counted, and splitting resumes after its end.
type lineSplitter struct {
	buf        []byte
	max        int
	discarding bool // inside a line that is being dropped
	// unframed: the next byte is not known to start a line (a pickup or
	// a gap). lineStart says whether bytes look like the start of a
	// line of this direction.
	unframed  bool
	lineStart func([]byte) bool
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
	l.discarding = false
	l.unframed = true
}

// empty reports whether no partial line is buffered.
func (l *lineSplitter) empty() bool { return len(l.buf) == 0 && !l.discarding && !l.unframed }

// feed hands each complete line of data, which starts at sequence number
// seq and came in a segment acknowledging ack, to emit, and returns how
// many over-long lines it dropped. emit may stop the splitting early by
// returning false; the rest of data and its sequence number are then
// returned unconsumed, as when the session switches to TLS mid-segment.
func (l *lineSplitter) feed(data []byte, seq, ack uint32, emit func(line) bool) (rest []byte, restSeq uint32, tooLong int) {
	for len(data) > 0 {
		if l.unframed {
			l.unframed = false
			if l.lineStart != nil && !l.lineStart(data) {
				l.discarding = true
			} else {
				l.start, l.ack, l.framed = seq, ack, false
			}
		} else if len(l.buf) == 0 && !l.discarding {
			l.start, l.ack, l.framed = seq, ack, true
		}
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			if !l.discarding {
				if len(l.buf)+len(data) > l.max+1 { // +1: a CR before the LF to come
					tooLong++
					l.buf = l.buf[:0]
					l.discarding = true
				} else {
					l.buf = append(l.buf, data...)
				}
			}
			return nil, seq + uint32(len(data)), tooLong
		}
		chunk := data[:i]
		data = data[i+1:]
		seq += uint32(i + 1)
		if l.discarding {
			l.discarding = false
			continue
		}
		text := chunk
		if len(l.buf) > 0 {
			if len(l.buf)+len(chunk) > l.max+1 {
				tooLong++
				l.buf = l.buf[:0]
				continue
			}
			l.buf = append(l.buf, chunk...)
			text = l.buf
		}
		if n := len(text); n > 0 && text[n-1] == '\r' {
			text = text[:n-1]
		}
		if len(text) > l.max {
			tooLong++
			l.buf = l.buf[:0]
			continue
		}
		ok := emit(line{text: text, start: l.start, end: seq, ack: l.ack, framed: l.framed})
		l.buf = l.buf[:0]
		if !ok {
			return data, seq, tooLong
		}
	}
	return nil, seq, tooLong
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
