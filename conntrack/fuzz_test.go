package conntrack

import (
	"encoding/binary"
	"github.com/ftpgate/ftpgate/internal/inetsum"
	"log/slog"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"

	"github.com/ftpgate/ftpgate/rules"
)

// FuzzPacketPath feeds arbitrary packet sequences through decoding,
// TCP tracking, the session machine, pairing and the policy. The input is
// split into packets by 2-byte length prefixes; the low bits of the first
// byte of each packet pick its link type, and unless its bit 2 is set the
// IP and TCP checksums are fixed up, so that mutated packets get past the
// checksum check. Nothing may panic, every open pinhole must be valid and
// match a channel the policy opened, and bookkeeping must stay
// consistent.
func FuzzPacketPath(f *testing.F) {
	c := newConn(f, cli, srv)
	var seed []byte
	add := func(p []byte) {
		seed = binary.BigEndian.AppendUint16(seed, uint16(len(p)+1))
		seed = append(seed, 0) // Ethernet
		seed = append(seed, p...)
	}
	for _, p := range c.greeted() {
		add(p)
	}
	add(c.send(true, "PASV\r\nPORT 192,0,2,10,200,1\r\n"))
	add(c.send(false, "227 Entering Passive Mode (198,51,100,20,200,1)\r\n200 ok\r\n"))
	add(c.send(true, "EPSV\r\nAUTH TLS\r\n"))
	add(c.send(false, "229 (|||50000|)\r\n234 go\r\n"))
	add(c.packet(true, c.cseq, "RA", nil))
	f.Add(seed)
	f.Add([]byte{0, 5, 0, 1, 2, 3, 4})

	links := []layers.LinkType{layers.LinkTypeEthernet, layers.LinkTypeLinuxSLL, layers.LinkTypeNull, layers.LinkTypeRaw}
	f.Fuzz(func(t *testing.T, data []byte) {
		opened := map[rules.Pinhole]bool{}
		fw := rules.NewDryRun()
		tr := NewTracker(Config{
			MaxSessions: 8, MaxPinholes: 8, MaxLineLength: 256, Logger: slog.New(slog.DiscardHandler),
			Observer: onChannel(func(ch Channel) {
				if ch.Verdict == VerdictOpen {
					opened[ch.Pinhole()] = true
				}
			}),
		}, fw)
		ts := time.Unix(1700000000, 0)
		for len(data) >= 2 {
			n := int(binary.BigEndian.Uint16(data))
			data = data[2:]
			if n == 0 || n > len(data) {
				break
			}
			pkt := data[:n]
			data = data[n:]
			ts = ts.Add(time.Millisecond)
			link := links[int(pkt[0]&3)]
			frame := pkt[1:]
			if pkt[0]&4 == 0 {
				frame = fixSums(frame, link)
			}
			tr.HandlePacket(frame, link, ts)
			if err := tr.Commit(); err != nil {
				t.Fatal(err)
			}
		}
		for p := range fw.Open {
			if !p.Valid() || !opened[p] {
				t.Fatalf("pinhole %v open without a valid open channel", p)
			}
		}
		st := tr.Stats()
		if st.PinholesOpen != len(fw.Open) || st.SessionsTracked > 8 || st.PinholesOpen > 8 {
			t.Fatalf("bookkeeping: %+v, backend holds %d", st, len(fw.Open))
		}
		tr.CloseAll("end")
		_ = tr.Commit()
		if len(fw.Open) != 0 {
			t.Fatalf("pinholes left after CloseAll: %v", fw.Open)
		}
	})
}

// fixSums returns a copy of a packet with its IPv4 header and TCP
// checksums made right, where it has them where decode looks.
func fixSums(frame []byte, link layers.LinkType) []byte {
	out := append([]byte(nil), frame...)
	ip, ok := linkPayload(out, link)
	if !ok || len(ip) < 20 {
		return out
	}
	var tcp []byte
	var pseudo uint32
	switch ip[0] >> 4 {
	case 4:
		ihl := int(ip[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(ip[2:]))
		if ihl < 20 || total < ihl || total > len(ip) {
			return out
		}
		ip[10], ip[11] = 0, 0
		binary.BigEndian.PutUint16(ip[10:], ^inetsum.Fold(inetsum.Sum(ip[:ihl], 0)))
		if ip[9] != 6 {
			return out
		}
		tcp = ip[ihl:total]
		pseudo = inetsum.Sum(ip[12:20], uint32(6)+uint32(len(tcp)))
	case 6:
		plen := int(binary.BigEndian.Uint16(ip[4:]))
		if len(ip) < 40 || ip[6] != 6 || 40+plen > len(ip) {
			return out
		}
		tcp = ip[40 : 40+plen]
		pseudo = inetsum.Sum(ip[8:40], uint32(6)+uint32(len(tcp)))
	default:
		return out
	}
	if len(tcp) < 20 {
		return out
	}
	tcp[16], tcp[17] = 0, 0
	binary.BigEndian.PutUint16(tcp[16:], ^inetsum.Fold(inetsum.Sum(tcp, pseudo)))
	return out
}
