package conntrack

import "bytes"

// lineSplitter cuts one direction's reassembled byte stream into lines
// wherever they fall: several per segment, or one over several segments.
// It keeps at most max bytes of an unfinished line; a longer line is
// dropped whole and counted, and splitting resumes after its end.
type lineSplitter struct {
	buf        []byte
	max        int
	discarding bool // inside a line that is being dropped
}

// resync drops any partial line and skips to the next line boundary, for
// a stream picked up mid-way or after a gap in the bytes.
func (l *lineSplitter) resync() {
	l.buf = l.buf[:0]
	l.discarding = true
}

// feed hands each complete line of data, without its CR LF or bare LF, to
// emit, and returns how many over-long lines it dropped. emit may stop
// the splitting early by returning false (the rest of data is returned
// unconsumed), as when the session switches to TLS mid-segment.
func (l *lineSplitter) feed(data []byte, emit func(line []byte) bool) (rest []byte, tooLong int) {
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			if l.discarding {
				return nil, tooLong
			}
			if len(l.buf)+len(data) > l.max {
				tooLong++
				l.buf = l.buf[:0]
				l.discarding = true
				return nil, tooLong
			}
			l.buf = append(l.buf, data...)
			return nil, tooLong
		}
		chunk := data[:i]
		data = data[i+1:]
		if l.discarding {
			l.discarding = false
			continue
		}
		line := chunk
		if len(l.buf) > 0 {
			if len(l.buf)+len(chunk) > l.max {
				tooLong++
				l.buf = l.buf[:0]
				continue
			}
			l.buf = append(l.buf, chunk...)
			line = l.buf
		} else if len(chunk) > l.max {
			tooLong++
			continue
		}
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
		ok := emit(line)
		l.buf = l.buf[:0]
		if !ok {
			return data, tooLong
		}
	}
	return nil, tooLong
}
