package conntrack

// tlsWalker follows the TLS record framing of one direction after AUTH
// TLS was accepted, without decrypting anything: 5-byte headers (type,
// version, length) and the lengths they announce. It reports clear text
// only where a session that really spoke TLS really closed it (RFC 4217
// CCC): after a handshake record started the stream, a record that can
// only be a close_notify alert ended it, and the next byte does not start
// a TLS record. Anything else is opaque for good: plaintext where a TLS
// record was due proves nothing, since a peer can send whatever it likes
// after AUTH, and the other side's TLS stack would have refused it.
type tlsWalker struct {
	hdr       [5]byte
	hdrLen    int
	remain    int  // bytes of the current record body still to skip
	records   int  // complete record headers seen
	handshake bool // the first record was a handshake record
	lastType  byte // type and length of the latest record
	lastLen   int
	opaque    bool // not TLS that ftpgate can follow: never clear again
	appData   bool // an application data record was seen: the handshake is over
}

// TLS record content types (RFC 8446 section 5.1).
const (
	tlsAlert           = 21
	tlsHandshake       = 22
	tlsApplicationData = 23
)

// walk consumes data and returns what follows the end of TLS, if the
// stream returned to clear text within data.
func (w *tlsWalker) walk(data []byte) (clear []byte, ok bool) {
	for len(data) > 0 && !w.opaque {
		if w.remain > 0 {
			n := min(w.remain, len(data))
			w.remain -= n
			data = data[n:]
			continue
		}
		if w.hdrLen == 0 && !isTLSRecordType(data[0]) {
			if w.closed() {
				return data, true
			}
			w.opaque = true
			return nil, false
		}
		n := copy(w.hdr[w.hdrLen:], data)
		w.hdrLen += n
		data = data[n:]
		if w.hdrLen < len(w.hdr) {
			return nil, false
		}
		w.hdrLen = 0
		if w.hdr[1] != 3 { // every SSLv3 and TLS record has major version 3
			w.opaque = true
			return nil, false
		}
		if w.records == 0 && w.hdr[0] != tlsHandshake {
			w.opaque = true
			return nil, false
		}
		w.records++
		w.handshake = true
		w.lastType, w.lastLen = w.hdr[0], int(w.hdr[3])<<8|int(w.hdr[4])
		w.appData = w.appData || w.lastType == tlsApplicationData
		w.remain = w.lastLen
	}
	return nil, false
}

// closed reports whether the latest record can only have been a
// close_notify: an alert record (up to TLS 1.2), or, in TLS 1.3, where
// alerts travel as application data, a record whose AEAD plaintext is
// exactly two bytes and a content type (16- or 8-byte tag). Even the
// shortest FTP line ("PWD\n") makes a longer record.
func (w *tlsWalker) closed() bool {
	if !w.handshake || w.records < 2 {
		return false
	}
	switch w.lastType {
	case tlsAlert:
		return true
	case tlsApplicationData:
		return w.lastLen == 2+1+16 || w.lastLen == 2+1+8
	}
	return false
}

// isTLSRecordType reports change_cipher_spec, alert, handshake,
// application_data and heartbeat: 20–24.
func isTLSRecordType(b byte) bool { return b >= 20 && b <= 24 }
