package conntrack

// tlsWalker follows the TLS record framing of one direction after AUTH TLS
// was accepted, without decrypting anything: 5-byte headers (type,
// version, length) and the lengths they announce. When a record boundary
// holds a byte that cannot start a TLS record, the peers have left TLS
// (CCC, RFC 4217 section 11) and the rest is clear text again.
type tlsWalker struct {
	hdr     [5]byte
	hdrLen  int
	remain  int // bytes of the current record body still to skip
	cleared bool
}

// walk consumes data and returns what follows the end of TLS, if the
// stream returned to clear text within data.
func (w *tlsWalker) walk(data []byte) (clear []byte, ok bool) {
	for len(data) > 0 {
		if w.remain > 0 {
			n := min(w.remain, len(data))
			w.remain -= n
			data = data[n:]
			continue
		}
		if w.hdrLen == 0 && !isTLSRecordType(data[0]) {
			w.cleared = true
			return data, true
		}
		n := copy(w.hdr[w.hdrLen:], data)
		w.hdrLen += n
		data = data[n:]
		if w.hdrLen < len(w.hdr) {
			return nil, false
		}
		if w.hdr[1] != 3 { // every TLS and SSLv3 record has major version 3
			w.cleared = true
			// The header bytes were not TLS after all; the clear text
			// starts at the first of them.
			rest := append(append([]byte(nil), w.hdr[:]...), data...)
			w.hdrLen = 0
			return rest, true
		}
		w.remain = int(w.hdr[3])<<8 | int(w.hdr[4])
		w.hdrLen = 0
	}
	return nil, false
}

// isTLSRecordType reports change_cipher_spec, alert, handshake,
// application_data and heartbeat: 20–24.
func isTLSRecordType(b byte) bool { return b >= 20 && b <= 24 }
