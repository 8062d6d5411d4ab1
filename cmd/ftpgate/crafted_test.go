package main

import (
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

var update = flag.Bool("update", false, "rewrite the crafted captures in testdata")

// flow writes the packets of one TCP control connection to a capture.
type flow struct {
	t              *testing.T
	w              *pcapgo.Writer
	client, server netip.AddrPort
	cseq, sseq     uint32
	ts             time.Time
}

func (f *flow) write(fromClient bool, seq, ack uint32, flags string, payload string) {
	f.t.Helper()
	src, dst := f.client, f.server
	if !fromClient {
		src, dst = f.server, f.client
	}
	tcp := &layers.TCP{
		SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()), Seq: seq, Ack: ack, Window: 502,
		SYN: strings.Contains(flags, "S"), ACK: strings.Contains(flags, "A"), FIN: strings.Contains(flags, "F"), PSH: payload != "",
	}
	if tcp.SYN {
		tcp.Options = []layers.TCPOption{{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}}}
	}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
	_ = tcp.SetNetworkLayerForChecksum(ip)
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, tcp, gopacket.Payload(payload)); err != nil {
		f.t.Fatal(err)
	}
	f.ts = f.ts.Add(time.Millisecond)
	b := buf.Bytes()
	if err := f.w.WritePacket(gopacket.CaptureInfo{Timestamp: f.ts, CaptureLength: len(b), Length: len(b)}, b); err != nil {
		f.t.Fatal(err)
	}
}

func (f *flow) handshake() {
	f.write(true, f.cseq, 0, "S", "")
	f.cseq++
	f.write(false, f.sseq, f.cseq, "SA", "")
	f.sseq++
	f.write(true, f.cseq, f.sseq, "A", "")
}

// send writes data from one side, acknowledging all the other sent. With
// lost set, the sequence numbers advance but nothing is written: the
// capture missed the segment.
func (f *flow) send(fromClient bool, data string, lost bool) {
	if fromClient {
		if !lost {
			f.write(true, f.cseq, f.sseq, "A", data)
		}
		f.cseq += uint32(len(data))
		return
	}
	if !lost {
		f.write(false, f.sseq, f.cseq, "A", data)
	}
	f.sseq += uint32(len(data))
}

func (f *flow) exchange(cmd, reply string) {
	f.send(true, cmd+"\r\n", false)
	f.send(false, reply+"\r\n", false)
}

func (f *flow) close() {
	f.write(true, f.cseq, f.sseq, "FA", "")
	f.cseq++
	f.write(false, f.sseq, f.cseq, "FA", "")
	f.sseq++
	f.write(true, f.cseq, f.sseq, "A", "")
}

// crafted are the captures TestAnalyzeCraftedCaptures checks, and how to
// write each.
var crafted = map[string]func(f *flow){
	// A passive transfer in clear text, then AUTH TLS and a TLS
	// handshake: the report draws the encrypted stretch.
	"crafted-auth-tls.pcap": func(f *flow) {
		f.handshake()
		f.send(false, "220 (vsFTPd 3.0.3)\r\n", false)
		f.exchange("USER anonymous", "230 Login successful.")
		f.exchange("PASV", "227 Entering Passive Mode (198,51,100,20,156,65).")
		f.exchange("AUTH TLS", "234 Proceed with negotiation.")
		f.send(true, "\x16\x03\x01\x00\x04\x01\x00\x00\x00", false)
		f.send(false, "\x16\x03\x03\x00\x04\x02\x00\x00\x00", false)
		f.send(true, "\x17\x03\x03\x00\x08PBSZ 0\r\n", false)
		f.close()
	},
	// Picked up mid-session, at a segment that starts a line, both ways.
	"crafted-pickup-line-boundary.pcap": func(f *flow) {
		f.exchange("PASV", "227 Entering Passive Mode (198,51,100,20,156,65).")
		f.exchange("TYPE I", "200 Switching to Binary mode.")
		f.exchange("PORT 192,0,2,10,200,1", "200 PORT command successful. Consider using PASV.")
		f.exchange("QUIT", "221 Goodbye.")
		f.close()
	},
	// 500 PORTs the server never answers.
	"crafted-500-unanswered-ports.pcap": func(f *flow) {
		f.handshake()
		f.send(false, "220 (vsFTPd 3.0.3)\r\n", false)
		f.exchange("USER anonymous", "230 Login successful.")
		for i := range 50 {
			var b strings.Builder
			for j := range 10 {
				n := 10*i + j
				fmt.Fprintf(&b, "PORT 192,0,2,10,%d,%d\r\n", 100+n/256, n%256)
			}
			f.send(true, b.String(), false)
			f.write(false, f.sseq, f.cseq, "A", "") // acknowledged, never answered
		}
		f.close()
	},
	// A client segment the capture missed early on, then 100 transfers.
	"crafted-long-session-lost-segment.pcap": func(f *flow) {
		f.handshake()
		f.send(false, "220 (vsFTPd 3.0.3)\r\n", false)
		f.exchange("USER anonymous", "230 Login successful.")
		f.send(true, "CWD /pub\r\n", true)
		f.send(false, "250 Directory successfully changed.\r\n", false)
		for i := range 100 {
			port := 10000 + i
			if i%2 == 0 {
				f.exchange("PASV", fmt.Sprintf("227 Entering Passive Mode (198,51,100,20,%d,%d).", port>>8, port&0xff))
			} else {
				f.exchange(fmt.Sprintf("PORT 192,0,2,10,%d,%d", port>>8, port&0xff), "200 PORT command successful. Consider using PASV.")
			}
			f.exchange("RETR file.bin", "150 Opening BINARY mode data connection.")
			f.send(false, "226 Transfer complete.\r\n", false)
		}
		f.exchange("QUIT", "221 Goodbye.")
		f.close()
	},
}

// createCapture creates an Ethernet pcap file, for the caller to close.
func createCapture(t *testing.T, path string) (*pcapgo.Writer, *os.File) {
	out, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := pcapgo.NewWriter(out)
	if err := w.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	return w, out
}

func writeCrafted(t *testing.T, name string, body func(*flow)) {
	w, out := createCapture(t, filepath.Join("testdata", name))
	defer out.Close()
	body(&flow{t: t, w: w, client: netip.MustParseAddrPort("192.0.2.10:40123"), server: netip.MustParseAddrPort("198.51.100.20:21"),
		cseq: 1000, sseq: 900000, ts: time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)})
}

// TestAnalyzeCraftedCaptures reads captures made for the cases that real
// ones rarely show (run with -update to write them again): every channel
// is reported, with the verdict the bytes on the wire deserve.
func TestAnalyzeCraftedCaptures(t *testing.T) {
	if *update {
		for name, body := range crafted {
			writeCrafted(t, name, body)
		}
	}
	t.Run("pickup at a line boundary", func(t *testing.T) {
		got := analyze(t, filepath.Join("testdata", "crafted-pickup-line-boundary.pcap"))
		want := []string{"PASV 198.51.100.20:40001 open", "PORT 192.0.2.10:51201 open"}
		var have []string
		for _, r := range got {
			have = append(have, fmt.Sprintf("%s %s open", r.Command, netip.AddrPortFrom(netip.MustParseAddr(r.RespH), uint16(r.RespP))))
			if r.Verdict != "open" {
				t.Errorf("%+v: want open", r)
			}
		}
		if strings.Join(have, "\n") != strings.Join(want, "\n") {
			t.Errorf("channels:\n%s\nwant:\n%s", strings.Join(have, "\n"), strings.Join(want, "\n"))
		}
	})
	t.Run("500 unanswered PORTs", func(t *testing.T) {
		got := analyze(t, filepath.Join("testdata", "crafted-500-unanswered-ports.pcap"))
		if len(got) != 500 {
			t.Fatalf("%d channels reported, want 500", len(got))
		}
		reasons := map[string]int{}
		ports := map[int]bool{}
		for _, r := range got {
			if r.Verdict != "refuse" {
				t.Errorf("%+v: want refuse", r)
			}
			reasons[r.Reason]++
			ports[r.RespP] = true
		}
		if len(ports) != 500 {
			t.Errorf("%d distinct ports, want 500", len(ports))
		}
		if n := reasons["no reply from the server before the session ended"]; n != 64 {
			t.Errorf("%d refused for want of a reply, want the 64 kept; reasons %v", n, reasons)
		}
	})
	// Every PASV opens, from the first exchange after the loss to the
	// last; every PORT is paired with its own 200 but refused: after a
	// loss no reply can be proven to answer it.
	t.Run("long session with a lost segment early on", func(t *testing.T) {
		got := analyze(t, filepath.Join("testdata", "crafted-long-session-lost-segment.pcap"))
		if len(got) != 100 {
			t.Fatalf("%d channels, want 100", len(got))
		}
		for i, r := range got {
			want := 10000 + i
			ok := r.RespP == want && r.Command == "PASV" && r.Verdict == "open"
			if i%2 == 1 {
				ok = r.RespP == want && r.Command == "PORT" && r.Verdict == "refuse" &&
					strings.Contains(r.Reason, "active mode refused on this session: bytes from the client were lost")
			}
			if !ok {
				t.Errorf("channel %d: %s %s:%d %s (%s)", i, r.Command, r.RespH, r.RespP, r.Verdict, r.Reason)
			}
		}
	})
}
