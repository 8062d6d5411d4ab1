package conntrack

import (
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"

	"github.com/ftpgate/ftpgate/rules"
)

// model plays an FTP client and server that follow the protocol, over a
// network that ftpgate watches imperfectly: it loses, duplicates and
// reorders ftpgate's copies (never the endpoints' packets), and forged
// segments with bad checksums reach ftpgate too. The model knows which
// announcements the server really accepted: the oracle.
type model struct {
	t        testing.TB
	c        *conn
	script   []byte
	wire     [][]byte // what ftpgate sees, in order
	accepted map[rules.Pinhole]bool
	// The server's view: commands received, not yet answered.
	queue []string
	port  uint16 // next data port; every announcement has its own
	// Network effects pending for the next segment.
	lose, dup, swap bool
	held            []byte // a segment held back by swap
	// authAccepted: the server answered an AUTH with 234.
	authAccepted bool
}

func (m *model) next() (byte, bool) {
	if len(m.script) == 0 {
		return 0, false
	}
	b := m.script[0]
	m.script = m.script[1:]
	return b, true
}

// emit puts a segment on ftpgate's wire, with the pending network effect.
func (m *model) emit(p []byte) {
	switch {
	case m.lose:
		m.lose = false
		return
	case m.swap && m.held == nil:
		m.held = p
		m.swap = false
		return
	}
	m.wire = append(m.wire, p)
	if m.dup {
		m.dup = false
		m.wire = append(m.wire, p)
	}
	if m.held != nil {
		m.wire = append(m.wire, m.held)
		m.held = nil
	}
}

func (m *model) newPort() uint16 { m.port++; return m.port }

// command makes the client send one or more commands in one segment.
func (m *model) command(pick byte, n int) {
	var b strings.Builder
	for i := range n {
		var cmd string
		switch (int(pick) + i) % 10 {
		case 0:
			cmd = "PASV"
		case 1:
			cmd = "EPSV"
		case 2, 3:
			p := m.newPort()
			cmd = fmt.Sprintf("PORT 192,0,2,10,%d,%d", p>>8, p&0xff)
		case 4:
			cmd = fmt.Sprintf("EPRT |1|192.0.2.10|%d|", m.newPort())
		case 5:
			cmd = "NOOP"
		case 6:
			cmd = "TYPE I"
		case 7:
			cmd = "PORT x"
		case 8:
			cmd = "RETR file"
		default:
			cmd = "AUTH TLS"
		}
		m.queue = append(m.queue, cmd)
		b.WriteString(cmd + "\r\n")
	}
	m.emit(m.c.send(true, b.String()))
}

// reply makes the server answer its oldest waiting command; accept says
// whether it accepts it.
func (m *model) reply(accept, prelim, multi bool) {
	if len(m.queue) == 0 {
		return
	}
	cmd := m.queue[0]
	m.queue = m.queue[1:]
	var text string
	switch verb := strings.Fields(cmd)[0]; {
	case !accept:
		text = "500 Refused.\r\n"
	case verb == "PASV":
		p := m.newPort()
		m.accepted[pin("192.0.2.10", "198.51.100.20", p)] = true
		text = fmt.Sprintf("227 Entering Passive Mode (198,51,100,20,%d,%d).\r\n", p>>8, p&0xff)
		if multi {
			text = fmt.Sprintf("227-Entering Passive Mode\r\n 198,51,100,20,%d,%d\r\n227 OK\r\n", p>>8, p&0xff)
		}
	case verb == "EPSV":
		p := m.newPort()
		m.accepted[pin("192.0.2.10", "198.51.100.20", p)] = true
		text = fmt.Sprintf("229 Entering Extended Passive Mode (|||%d|)\r\n", p)
	case verb == "PORT" && cmd != "PORT x", verb == "EPRT":
		var p uint16
		if verb == "PORT" {
			var hi, lo uint16
			fmt.Sscanf(cmd, "PORT 192,0,2,10,%d,%d", &hi, &lo)
			p = hi<<8 | lo
		} else {
			fmt.Sscanf(cmd, "EPRT |1|192.0.2.10|%d|", &p)
		}
		m.accepted[pin("198.51.100.20", "192.0.2.10", p)] = true
		text = "200 PORT command successful.\r\n"
	case verb == "AUTH":
		m.authAccepted = true
		text = "234 Proceed with negotiation.\r\n"
	case verb == "RETR":
		if prelim {
			m.emit(m.c.send(false, "150 Opening BINARY mode data connection.\r\n"))
		}
		text = "226 Transfer complete.\r\n"
	default:
		text = "200 OK.\r\n"
	}
	m.emit(m.c.send(false, text))
}

// forge puts on ftpgate's wire a segment no endpoint accepts (its
// checksum is wrong), claiming the next bytes of one side.
func (m *model) forge(fromClient bool) {
	p := m.newPort()
	if fromClient {
		m.wire = append(m.wire, badSum(m.c.segment(true, m.c.cseq, m.c.sseq, "A",
			[]byte(fmt.Sprintf("PORT 192,0,2,10,%d,%d\r\n", p>>8, p&0xff)))))
		return
	}
	m.wire = append(m.wire, badSum(m.c.segment(false, m.c.sseq, m.c.cseq, "A",
		[]byte(fmt.Sprintf("227 Entering Passive Mode (198,51,100,20,%d,%d).\r\n234 Proceed.\r\n", p>>8, p&0xff)))))
}

func (m *model) run() {
	for _, p := range m.c.handshake() {
		m.emit(p)
	}
	// Commands may come before the greeting.
	if b, ok := m.next(); ok && b%4 == 0 {
		m.command(b/4, 1)
	}
	m.emit(m.c.send(false, "220 (vsFTPd 3.0.3)\r\n"))
	for {
		op, ok := m.next()
		if !ok {
			break
		}
		arg, _ := m.next()
		switch op % 10 {
		case 0, 1:
			m.command(arg, 1)
		case 2:
			m.command(arg, 1+int(arg%4))
		case 3, 4, 5:
			m.reply(arg%5 != 0, arg&8 != 0, arg&16 != 0)
		case 6:
			m.lose = true
		case 7:
			m.dup = true
		case 8:
			m.swap = true
		case 9:
			m.forge(arg&1 == 0)
		}
	}
	for len(m.queue) > 0 {
		m.reply(true, false, false)
	}
	m.lose, m.dup, m.swap = false, false, false
	m.emit(m.c.fin(true))
	m.emit(m.c.fin(false))
}

// FuzzSessionOracle drives both directions of a control session with a
// model client and server that follow FTP, commands pipelined and
// replies interleaved at random, over a network that loses, duplicates
// and reorders ftpgate's copies and adds forged segments, and requires
// that every channel ftpgate opens is one the server really accepted,
// and that an FTPS range opens only after the server accepted an AUTH,
// and is gone once the handshake timeout has passed without TLS (the
// model's endpoints never speak it).
func FuzzSessionOracle(f *testing.F) {
	f.Add([]byte{1, 0, 0, 3, 1, 3, 2, 3, 4, 3, 3})
	f.Add([]byte{0, 2, 3, 3, 1, 3, 1, 3, 1, 3, 1, 6, 0, 0, 2, 3, 1, 0, 3, 3, 1})
	f.Add([]byte{4, 2, 7, 3, 1, 3, 1, 6, 0, 0, 3, 3, 1, 3, 1, 8, 0, 0, 3, 3, 1, 9, 0, 9, 1, 0, 2})
	f.Add([]byte{0, 2, 3, 6, 0, 3, 1, 3, 1, 3, 1, 0, 2, 3, 1})
	f.Fuzz(func(t *testing.T, script []byte) {
		if len(script) > 1500 {
			return
		}
		m := &model{t: t, c: newConn(t, cli, srv), script: script, accepted: map[rules.Pinhole]bool{}, port: 2000}
		m.run()
		var opened []Channel
		tr := NewTracker(Config{Logger: slog.New(slog.DiscardHandler), Observer: onChannel(func(ch Channel) {
			if ch.Verdict == VerdictOpen {
				opened = append(opened, ch)
			}
		}), FTPSRanges: []FTPSRange{{Server: netip.MustParsePrefix("198.51.100.20/32"), Lo: 30000, Hi: 30099}}}, rules.NewDryRun())
		ts := time.Unix(1700000000, 0)
		for _, p := range m.wire {
			ts = ts.Add(time.Millisecond)
			tr.HandlePacket(p, layers.LinkTypeEthernet, ts)
		}
		if tr.Stats().ScopedOpened > 0 && !m.authAccepted {
			t.Fatalf("an FTPS range opened though the server accepted no AUTH")
		}
		tr.Expire(ts.Add(DefaultHandshakeTimeout + time.Second))
		if n := tr.Stats().Scoped; n != 0 {
			t.Fatalf("%d FTPS ranges open past the handshake timeout of a session that never spoke TLS", n)
		}
		tr.CloseAll("end")
		for _, ch := range opened {
			if !m.accepted[ch.Pinhole()] {
				t.Fatalf("opened %v (%s %s), which the server never accepted", ch.Pinhole(), ch.Command, ch.Reason)
			}
		}
	})
}
