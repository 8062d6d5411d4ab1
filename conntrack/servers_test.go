package conntrack

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// session runs a session from cli to srv (198.51.100.20:21) through a
// PASV and a PORT, and returns the channels it announced.
func serversSession(t *testing.T, h *harness, client ...string) []Channel {
	from := cli
	if len(client) > 0 {
		from = client[0]
	}
	c := newConn(t, from, srv)
	h.feed(c.handshake()...)
	h.feed(c.send(false, "220 hello\r\n"), c.send(true, "PASV\r\n"),
		c.send(false, "227 Entering Passive Mode (198,51,100,20,156,65).\r\n"),
		c.send(true, "PORT 192,0,2,10,156,66\r\n"), c.send(false, "200 ok\r\n"))
	return h.channels
}

func TestServerScoping(t *testing.T) {
	all := func(c []Channel) string {
		var s []string
		for _, ch := range c {
			s = append(s, ch.Command.String()+":"+ch.Verdict.String()+":"+ch.Reason)
		}
		return strings.Join(s, " | ")
	}
	// Not one of the servers ftpgate serves.
	h := newHarness(t, Config{Servers: []ServerPolicy{{Prefix: netip.MustParsePrefix("203.0.113.0/24")}}})
	if got := all(serversSession(t, h)); strings.Count(got, "refuse:server 198.51.100.20:21 is not one ftpgate serves") != 2 {
		t.Errorf("unserved server: %s", got)
	}
	// Served, active mode off, its own pinhole timeout.
	h = newHarness(t, Config{Servers: []ServerPolicy{{Prefix: netip.MustParsePrefix("198.51.100.20/32"), Ports: []uint16{21},
		NoActive: true, PinholeTimeout: 5 * time.Second}}})
	got := all(serversSession(t, h))
	if !strings.HasPrefix(got, "PASV:open:") || !strings.Contains(got, "PORT:refuse:active mode is not allowed to server 198.51.100.20:21") {
		t.Errorf("NoActive server: %s", got)
	}
	for _, to := range h.fw.Open {
		if to != 5*time.Second {
			t.Errorf("pinhole timeout %v, want the server's 5s", to)
		}
	}
	// Its own minimum data port (40001 is below 50000), then reloaded.
	h = newHarness(t, Config{Servers: []ServerPolicy{{Prefix: netip.MustParsePrefix("198.51.100.0/24"), MinDataPort: 50000}}})
	if got := all(serversSession(t, h)); strings.Count(got, "below the minimum data port 50000") != 2 {
		t.Errorf("MinDataPort 50000: %s", got)
	}
	h.channels = nil
	h.tr.Reconfigure(Reconfigurable{MinDataPort: 1024, PinholeTimeout: time.Minute, IdleTimeout: time.Hour, HandshakeTimeout: 10 * time.Second, MaxPinholesPerSession: 4})
	if got := all(serversSession(t, h, "192.0.2.10:40002")); strings.Count(got, ":open:") != 2 {
		t.Errorf("after reloading without servers: %s", got)
	}
}
