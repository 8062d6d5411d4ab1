package test

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The hostile suite for the NAT control proxy, on the NAT lab: each test
// sends the attack through the gateway, then tries the connection it
// would allow, through the gateway, and requires it to fail.

const (
	lan4, lan6 = "192.0.2.2", "2001:db8:1::2"
	dmz4, dmz6 = "198.51.100.2", "2001:db8:2::2"
)

// natArgs run ftpgate on the NAT lab's gateway.
var natArgs = []string{"--control-ports", "21,2121,2122,2150,2151,2152,2153"}

// TestHostileNATGatewayPort: a LAN client behind masquerade announces the
// gateway's public address and port 8080, which the admin forwards to a
// DMZ service. The server's connection to public:8080 must still reach
// the DMZ service: the client's mapping gets a port of --nat-ports.
func TestHostileNATGatewayPort(t *testing.T) {
	needNATLab(t)
	setNATRuleset(t, "ftpgate")
	for _, c := range []struct {
		name, server, public, dmz, lan, cmd string
	}{
		{"PORT", inetServer4, public4, dmz4, lan4, "PORT 203,0,113,1,31,144"},
		{"EPRT", inetServer4, public4, dmz4, lan4, "EPRT |1|203.0.113.1|8080|"},
		{"EPRT v6", inetServer6, public6, dmz6, lan6, "EPRT |2|2001:db8:3::1|8080|"},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := startFtpgateIn(t, natNS("gw"), natArgs...)
			serveBanner(t, natNS("dmz"), c.dmz, 8080, "dmz")
			serveBanner(t, natNS("lan"), c.lan, 8080, "lan")
			host := c.server + ":21"
			if strings.Contains(c.server, ":") {
				host = "[" + c.server + "]:21"
			}
			rawSession(t, natNS("lan"), host, "@read", "USER anonymous\r\n", "@read", "PASS x\r\n", "@read",
				c.cmd+"\r\n", "@read", "@sleep=8")
			r := d.waitLog(t, 5*time.Second, "channel open", "command", c.cmd[:4])
			if p, _ := strconv.Atoi(fmt.Sprint(r["nat_p"])); p < 61000 {
				t.Errorf("the public port of the mapping is %v, not one of --nat-ports: %v", r["nat_p"], r)
			}
			if got := bannerFrom(natNS("inet"), "", c.public, 8080); got != "dmz" {
				t.Errorf("the server's connection to %s:8080 reached %q, want the admin's DMZ service", c.public, got)
			}
		})
	}
}

// TestHostileNATMappingAfterAccept: the server gets the rewritten PORT,
// but nothing is mapped until it accepts it: a server that connects to
// the announced public port before replying (and then refuses the
// command) reaches nothing, before or after.
func TestHostileNATMappingAfterAccept(t *testing.T) {
	needNATLab(t)
	setNATRuleset(t, "ftpgate")
	d := startFtpgateIn(t, natNS("gw"), natArgs...)
	srv := startScripted(t, natNS("inet"), inetServer4, 2150, "portprobe")
	serveBanner(t, natNS("lan"), lan4, 40404, "lan")
	rawSession(t, natNS("lan"), inetServer4+":2150", "@read", "PORT 192,0,2,2,157,212\r\n", "@read", "@sleep=5")
	probe := srv.waitOutput(t, "early ", 10*time.Second)
	if !strings.HasPrefix(probe, "early closed") {
		t.Errorf("the server reached the announced port before it accepted the PORT: %q", probe)
	}
	port, _ := strconv.Atoi(strings.Fields(probe)[2])
	if port < 61000 {
		t.Errorf("the server was told port %d, not one of --nat-ports", port)
	}
	d.waitLog(t, 5*time.Second, "channel refused", "command", "PORT")
	if got := bannerFrom(natNS("inet"), "", public4, port); got != "" {
		t.Errorf("after the server refused the PORT, its public port %d reached %q", port, got)
	}
}

// TestHostileNATLongLines: the proxy frames lines as the tracker does,
// with --max-line: a client line of 4,096 bytes and a PORT, and a server
// reply line whose tail from byte 4,096 is a 227 (behind two PASVs, so
// that the head's 500 answers the first), are never parsed, rewritten or
// mapped.
func TestHostileNATLongLines(t *testing.T) {
	needNATLab(t)
	setNATRuleset(t, "ftpgate")
	t.Run("client line ending in PORT", func(t *testing.T) {
		d := startFtpgateIn(t, natNS("gw"), natArgs...)
		serveBanner(t, natNS("lan"), lan4, 40405, "lan")
		out := rawSession(t, natNS("lan"), inetServer4+":21", "@read", "USER anonymous\r\n", "@read", "PASS x\r\n", "@read",
			strings.Repeat("x", 4096)+"PORT 192,0,2,2,157,213\r\n", "@read")()
		t.Logf("session: %.300s", out)
		// What the attack would allow: the public port of any mapping
		// made for it.
		for _, r := range d.find("channel open") {
			p, _ := strconv.Atoi(fmt.Sprint(r["nat_p"]))
			t.Errorf("a channel opened for the tail of a line too long: %v", r)
			if got := bannerFrom(natNS("inet"), "", public4, p); got != "" {
				t.Errorf("the server reached the LAN client through it: %q", got)
			}
		}
		if left := natKernelState(t); len(left) != 0 {
			t.Errorf("in the kernel: %v", left)
		}
	})
	t.Run("server reply whose tail is a 227", func(t *testing.T) {
		d := startFtpgateIn(t, natNS("gw"), natArgs...)
		startScripted(t, natNS("dmz"), dmz4, 2151, "longreply", dmz4, "5432")
		serveBanner(t, natNS("dmz"), dmz4, 5432, "database")
		out := rawSession(t, natNS("inet"), public4+":2151", "@read", "PASV\r\nPASV\r\n", "@read")()
		targets := append(hostPorts(out), [2]string{public4, "5432"})
		for _, hp := range targets {
			p, _ := strconv.Atoi(hp[1])
			if got := bannerFrom(natNS("inet"), "", hp[0], p); got != "" {
				t.Errorf("the client reached %s:%d (%q) from the tail of a reply line too long", hp[0], p, got)
			}
		}
		if r := d.find("channel open"); len(r) != 0 {
			t.Errorf("channels opened: %v", r)
		}
	})
}

// TestHostileEchoedReply: a server that ends commands only at CR LF and
// echoes a raw LF of an argument writes a line that looks like a 227 in
// the middle of its reply. Pipelined behind a PASV, with pairing put out
// of step by a first echo, that 227 would open the server's port 5432:
// it must not, through the copies nor through the proxy.
func TestHostileEchoedReply(t *testing.T) {
	attack := func(server string) []string {
		s := strings.ReplaceAll(server, ".", ",")
		return []string{"@read",
			"MKD a\n227 Entering Passive Mode (" + s + ",1,1)\n150 a\r\n", "@read",
			"MKD x\n227 Entering Passive Mode (" + s + ",21,56)\n150 x\r\nPASV\r\n", "@read", "@sleep=4"}
	}
	t.Run("copies", func(t *testing.T) {
		needLab(t)
		setRuleset(t, "ftpgate")
		d := startFtpgate(t, "--control-ports", "21,2134")
		startScripted(t, ns("server"), server4, 2134, "echo", server4, "40777")
		serveBanner(t, ns("server"), server4, 5432, "database")
		wait := rawSession(t, ns("client"), server4+":2134", attack(server4)...)
		d.waitLog(t, 5*time.Second, "channel open", "resp_p", "40777")
		if got := bannerFrom(ns("client"), "", server4, 5432); got != "" {
			t.Errorf("the client reached the server's port 5432: %q", got)
		}
		t.Logf("session: %s", wait())
	})
	t.Run("proxy", func(t *testing.T) {
		needNATLab(t)
		setNATRuleset(t, "ftpgate")
		d := startFtpgateIn(t, natNS("gw"), natArgs...)
		startScripted(t, natNS("dmz"), dmz4, 2152, "echo", dmz4, "40777")
		serveBanner(t, natNS("dmz"), dmz4, 5432, "database")
		out := rawSession(t, natNS("inet"), public4+":2152", attack(dmz4)...)()
		d.waitLog(t, 5*time.Second, "channel open", "resp_p", "40777")
		for _, r := range d.find("channel open") {
			if fmt.Sprint(r["resp_p"]) == "5432" {
				t.Errorf("a channel opened to the echoed port: %v", r)
			}
		}
		for _, hp := range append(hostPorts(out), [2]string{public4, "5432"}) {
			p, _ := strconv.Atoi(hp[1])
			if got := bannerFrom(natNS("inet"), "", hp[0], p); got == "database" {
				t.Errorf("the client reached the DMZ's port 5432 through %s:%d", hp[0], p)
			}
		}
	})
}

// TestHostilePacketPathBlindReset: a reset at a random sequence number,
// forged from a LAN client's own address and port (it passes the
// reverse-path check: the same link), into a translated session whose
// PORT the packet path rewrote to another length, ends nothing: the
// session's next command is answered through the gateway. (A packet
// path that ended the connection on any reset would stop shifting its
// segments, and the next command would never reach the server.)
func TestHostilePacketPathBlindReset(t *testing.T) {
	needNATLab(t)
	setNATRuleset(t, "ftpgate")
	d := startFtpgateIn(t, natNS("gw"), "--control-ports", "21,2121,2122")
	mac, err := exec.Command("ip", "netns", "exec", natNS("gw"), "cat", "/sys/class/net/lan/address").Output()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", natNS("lan"), forgeBin, "session",
		"-dev", natLab+"-l0", "-gwmac", strings.TrimSpace(string(mac)), "-server", inetServer4+":21", "-inject", "random-rst",
		"USER anonymous", "PASS x", "PORT 192,0,2,2,200,10", "@inject", "NOOP", "NOOP").CombinedOutput()
	if err != nil {
		t.Fatalf("forge session: %v\n%s", err, out)
	}
	if r := d.find("channel open", "command", "PORT"); len(r) == 0 || r[0]["nat_h"] == nil {
		t.Fatalf("the PORT was not rewritten, so the test shifts nothing:\n%s", out)
	}
	if n := strings.Count(string(out), "200 NOOP ok"); n != 2 {
		t.Errorf("after the forged reset, %d of 2 NOOPs answered:\n%s", n, out)
	}
}
