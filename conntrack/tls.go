package conntrack

// tlsWalker follows the TLS record framing of one direction of an
// encrypted session, without decrypting anything: 5-byte headers (type,
// version, length) and the lengths they announce, and the type of the
// first handshake message. From that it tells:
//
//   - whether the direction speaks TLS at all: its first record must be
//     a handshake record carrying the hello this side sends (ClientHello
//     from the client, ServerHello from the server), and every record
//     must have a TLS header. Anything else is opaque for good: an echo
//     service sends the client's ClientHello back, a fake sends a few
//     bytes that only look like records, and neither becomes TLS later.
//   - the data records each side sends, for the session to judge whether
//     the handshake completed (see Session.tlsRounds).
//   - whether it ended (closed): after a handshake, a record that can only
//     be a close_notify, followed by what is not a TLS record (RFC 4217
//     CCC). Plaintext where a record was due proves nothing: a peer can
//     send whatever it likes after AUTH, and the other side's TLS stack
//     would have refused it.
type tlsWalker struct {
	hdr      [5]byte
	hdrLen   int
	hdrSeq   uint32 // sequence number of the current header's first byte
	hdrAck   uint32 // acknowledgement number of the segment it began in
	remain   int    // bytes of the current record body still to skip
	records  int    // complete record headers seen
	hello    byte   // the hello this side must start with
	helloOK  bool   // its first record held that hello
	lastType byte   // type and length of the latest record
	lastLen  int
	opaque   bool // not TLS that ftpgate can follow: never clear again
	// The handshake header of the first record, as it arrives.
	helloHdr  [4]byte
	helloHave int
	// data: application data records (not an encrypted alert's size)
	// whose headers the latest walk read: where each ends, and what its
	// segment acknowledged. Reused.
	data []tlsRecord
}

// tlsRecord is one application data record of a direction.
type tlsRecord struct {
	end, ack uint32
}

// TLS record content types (RFC 8446 section 5.1) and handshake types.
const (
	tlsAlert           = 21
	tlsHandshake       = 22
	tlsApplicationData = 23
	tlsClientHello     = 1
	tlsServerHello     = 2
)

// Sizes no real TLS peer goes below: a ClientHello or ServerHello body
// (version, 32-byte random, session id length, a cipher suite and a
// compression method at least), and an encrypted record (a 16-byte tag
// and a byte, TLS 1.3; more in 1.2).
const (
	minHelloLen   = 38
	minDataRecord = 17
)

// walk consumes data, which starts at sequence number seq and came in a
// segment acknowledging ack, and returns what follows the end of TLS, if
// the stream returned to clear text within data.
func (w *tlsWalker) walk(data []byte, seq, ack uint32) (clear []byte, ok bool) {
	w.data = w.data[:0]
	for len(data) > 0 && !w.opaque {
		if w.remain > 0 {
			if w.records == 1 && !w.helloOK {
				// The first bytes of the first record: the handshake
				// message's type and length.
				n := copy(w.helloHdr[w.helloHave:], data[:min(len(data), w.remain)])
				w.helloHave += n
				if w.helloHave == len(w.helloHdr) {
					length := int(w.helloHdr[1])<<16 | int(w.helloHdr[2])<<8 | int(w.helloHdr[3])
					if w.helloHdr[0] != w.hello || length < minHelloLen {
						w.opaque = true
						return nil, false
					}
					w.helloOK = true
				} else if w.remain == n {
					w.opaque = true // a first record too short for a hello's header
					return nil, false
				}
			}
			n := min(w.remain, len(data))
			w.remain -= n
			data, seq = data[n:], seq+uint32(n)
			continue
		}
		if w.hdrLen == 0 && !isTLSRecordType(data[0]) {
			if w.closed() {
				return data, true
			}
			w.opaque = true
			return nil, false
		}
		if w.hdrLen == 0 {
			w.hdrSeq, w.hdrAck = seq, ack
		}
		n := copy(w.hdr[w.hdrLen:], data)
		w.hdrLen += n
		data, seq = data[n:], seq+uint32(n)
		if w.hdrLen < len(w.hdr) {
			return nil, false
		}
		w.hdrLen = 0
		typ, length := w.hdr[0], int(w.hdr[3])<<8|int(w.hdr[4])
		if w.hdr[1] != 3 { // every SSLv3 and TLS record has major version 3
			w.opaque = true
			return nil, false
		}
		if w.records == 0 {
			if typ != tlsHandshake || length == 0 {
				w.opaque = true
				return nil, false
			}
		} else if !w.helloOK {
			w.opaque = true // a record before the hello's first byte: impossible
			return nil, false
		}
		if typ == tlsApplicationData && length >= minDataRecord && !alertSized(length) {
			w.data = append(w.data, tlsRecord{end: w.hdrSeq + 5 + uint32(length), ack: w.hdrAck})
		}
		w.records++
		w.lastType, w.lastLen = typ, length
		w.remain = length
	}
	return nil, false
}

// alertSized reports whether a TLS 1.3 application data record is
// exactly the size of an encrypted alert: two bytes, the content type,
// and a 16- or 8-byte tag.
func alertSized(length int) bool { return length == 2+1+16 || length == 2+1+8 }

// closed reports whether the latest record can only have been a
// close_notify: an alert record (up to TLS 1.2), or, in TLS 1.3, where
// alerts travel as application data, a record whose AEAD plaintext is
// exactly two bytes and a content type (16- or 8-byte tag). Even the
// shortest FTP line ("PWD\n") makes a longer record.
func (w *tlsWalker) closed() bool {
	if !w.helloOK || w.records < 2 {
		return false
	}
	switch w.lastType {
	case tlsAlert:
		return true
	case tlsApplicationData:
		return alertSized(w.lastLen)
	}
	return false
}

// isTLSRecordType reports change_cipher_spec, alert, handshake,
// application_data and heartbeat: 20–24.
func isTLSRecordType(b byte) bool { return b >= 20 && b <= 24 }
