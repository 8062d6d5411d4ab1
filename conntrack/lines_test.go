package conntrack

import (
	"bytes"
	"testing"
)

// splitAll feeds data to a fresh splitter in the given pieces and
// returns the lines it emitted (runs of empty lines one by one) and the
// bytes it passed on.
func splitAll(max int, pieces [][]byte) (lines []line, passed []byte) {
	l := lineSplitter{max: max, pass: func(b []byte) { passed = append(passed, b...) }}
	seq := uint32(1000)
	for _, p := range pieces {
		l.feed(p, seq, 0, func(x line) bool {
			if x.blanks > 0 {
				for i := 0; i < len(x.text); i++ {
					crlf := x.text[i] == '\r'
					if crlf {
						i++
					}
					lines = append(lines, line{crlf: crlf})
				}
				return true
			}
			x.text = bytes.Clone(x.text)
			x.start, x.end, x.ack = 0, 0, 0
			lines = append(lines, x)
			return true
		})
		seq += uint32(len(p))
	}
	return lines, passed
}

// FuzzLineSplitter: however a stream is cut into segments, the splitter
// frames the same lines; no line holds an LF or exceeds the limit; a line
// too long is never emitted in pieces; and every byte that was not held
// for a line still to end was either in a line it emitted or passed on.
func FuzzLineSplitter(f *testing.F) {
	f.Add([]byte("PORT 1,2,3,4,5,6\r\nNOOP\n\n\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxPORT 1,2,3,4,5,6\r\n"), []byte{3, 17, 40})
	f.Add([]byte("227-a\r\n227 b\n\n\n"), []byte{1, 1, 1})
	f.Fuzz(func(t *testing.T, data, cuts []byte) {
		const max = 32
		whole, passedWhole := splitAll(max, [][]byte{data})
		var pieces [][]byte
		rest := data
		for _, c := range cuts {
			if len(rest) == 0 {
				break
			}
			n := min(int(c)%8+1, len(rest))
			pieces = append(pieces, rest[:n])
			rest = rest[n:]
		}
		pieces = append(pieces, rest)
		cut, passedCut := splitAll(max, pieces)
		if len(whole) != len(cut) {
			t.Fatalf("%d lines whole, %d when cut", len(whole), len(cut))
		}
		var emitted []byte
		for i := range whole {
			a, b := whole[i], cut[i]
			if !bytes.Equal(a.text, b.text) || a.crlf != b.crlf || a.tooLong != b.tooLong {
				t.Fatalf("line %d: %+v whole, %+v when cut", i, a, b)
			}
			if bytes.IndexByte(a.text, '\n') >= 0 || len(a.text) > max {
				t.Fatalf("line %d: %q", i, a.text)
			}
			if !a.tooLong {
				emitted = rawLine(emitted, a)
			}
		}
		if !bytes.Equal(passedWhole, passedCut) {
			t.Fatalf("passed on %q whole, %q when cut", passedWhole, passedCut)
		}
		// What is neither emitted nor passed is the end of a line still
		// to come: at most max+1 bytes, none an LF.
		held := len(data) - len(emitted) - len(passedWhole)
		if held < 0 || held > max+1 || (held > 0 && bytes.IndexByte(data[len(data)-held:], '\n') >= 0) {
			t.Fatalf("%d bytes unaccounted for of %q (emitted %q, passed %q)", held, data, emitted, passedWhole)
		}
	})
}
