package test

import (
	"context"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The hostile suite for FTPS scoped ranges: a range is for a client that
// really speaks TLS with that server. Each test makes a range-worthy
// looking session without that, then tries the server's passive range
// through the gateway.

// rangePort is a port of the lab's FTPS range (41000-41999) where the
// tests keep a service that says who it is.
const rangePort = 41234

// tlsClientHello makes the bytes of a real ClientHello (Python's TLS
// stack), to send and then go silent.
func tlsClientHello(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("python3", "-c", `import ssl
ctx=ssl.create_default_context(); ctx.check_hostname=False; ctx.verify_mode=ssl.CERT_NONE
i,o=ssl.MemoryBIO(),ssl.MemoryBIO()
s=ctx.wrap_bio(i,o)
try: s.do_handshake()
except ssl.SSLWantReadError: pass
print(o.read().decode("latin-1").encode("unicode_escape").decode())`).Output()
	if err != nil {
		t.Fatalf("making a ClientHello: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// TestHostileFTPSWithoutTLS: a 234 that answers no AUTH (the greeting,
// or a reply to NOOP), an AUTH that never starts TLS (past the handshake
// timeout), an AUTH followed by plain text, and, on an implicit FTPS
// port, a lone ClientHello, or records that only look like TLS echoed by
// a server that is no TLS server: none may leave the range open to the
// client.
func TestHostileFTPSWithoutTLS(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	args := []string{"--ftps-passive-ports", server4 + "=" + ftpsRange, "--control-ports", "21,2135,2136",
		"--ftps-implicit-ports", "990,2990", "--handshake-timeout", "2s"}
	hello := tlsClientHello(t)
	fake := `\x16\x03\x01\x00\x01\x01\x17\x03\x03\x00\x01\x00`
	for _, c := range []struct {
		name, port, mode string
		items            []string
		wait             time.Duration // before the range is tried
	}{
		{"234 greeting", "2135", "greet234", []string{"@read", "@sleep=6"}, 500 * time.Millisecond},
		{"234 to NOOP", "2135", "greet234", []string{"@read", "NOOP\r\n", "@read", "@sleep=6"}, 500 * time.Millisecond},
		{"AUTH and no TLS", "2136", "authidle", []string{"@read", "AUTH TLS\r\n", "@read", "@sleep=8"}, 500 * time.Millisecond},
		{"AUTH and plain text", "2136", "authidle", []string{"@read", "AUTH TLS\r\n", "@read", "PASV\r\n", "@sleep=6"}, 500 * time.Millisecond},
		{"implicit: lone ClientHello", "990", "", []string{hello, "@read", "@sleep=6"}, 500 * time.Millisecond},
		{"implicit: records echoed", "2990", "bytes", []string{fake, "@read", `\x17\x03\x03\x00\x01\x00`, "@read", "@sleep=6"}, 500 * time.Millisecond},
		{"implicit: ClientHello echoed", "2990", "bytes", []string{hello, "@read", "@sleep=6"}, 500 * time.Millisecond},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := startFtpgate(t, args...)
			if c.mode != "" {
				p, _ := strconv.Atoi(c.port)
				startScripted(t, ns("server"), server4, p, c.mode)
			}
			serveBanner(t, ns("server"), server4, rangePort, "in the range")
			rawSession(t, ns("client"), server4+":"+c.port, c.items...)
			d.waitLog(t, 5*time.Second, "session start", "server", server4+":"+c.port)
			switch c.name {
			case "AUTH and no TLS":
				// Open after the 234, for the handshake to come...
				d.waitLog(t, 5*time.Second, "scoped range open")
				if got := bannerFrom(ns("client"), "", server4, rangePort); got != "in the range" {
					t.Fatalf("no range right after the 234: %q", got)
				}
				// ...which never comes.
				d.waitLog(t, 5*time.Second, "scoped range closed", "kind", "not_tls")
			case "AUTH and plain text":
				d.waitLog(t, 5*time.Second, "scoped range closed", "kind", "not_tls")
			}
			time.Sleep(c.wait)
			if got := bannerFrom(ns("client"), "", server4, rangePort); got != "" {
				t.Errorf("the client reached the server's passive range: %q", got)
			}
		})
	}
}

// TestHostileFTPSNATWithoutTLS: through the control proxy, an implicit
// FTPS session that never speaks TLS, and an explicit one that stops at
// the 234, get no range (it was opened as soon as TCP was up, and kept
// until the client's socket closed).
func TestHostileFTPSNATWithoutTLS(t *testing.T) {
	needNATLab(t)
	setNATRuleset(t, "ftpgate")
	args := []string{"--control-ports", "21,2153", "--ftps-implicit-ports", "2990",
		"--ftps-passive-ports", dmz4 + "=41000-41999", "--handshake-timeout", "2s"}
	for _, c := range []struct {
		name, port, mode string
		items            []string
		wait             time.Duration
	}{
		{"implicit, nothing sent", "2990", "bytes", []string{"@sleep=6"}, time.Second},
		{"AUTH and no TLS", "2153", "authidle", []string{"@read", "AUTH TLS\r\n", "@read", "@sleep=10"}, 500 * time.Millisecond},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := startFtpgateIn(t, natNS("gw"), args...)
			p, _ := strconv.Atoi(c.port)
			startScripted(t, natNS("dmz"), dmz4, p, c.mode)
			serveBanner(t, natNS("dmz"), dmz4, rangePort, "in the range")
			rawSession(t, natNS("inet"), public4+":"+c.port, c.items...)
			d.waitLog(t, 5*time.Second, "session start", "server", dmz4+":"+c.port)
			if c.name == "AUTH and no TLS" {
				d.waitLog(t, 5*time.Second, "scoped range open")
				if got := bannerFrom(natNS("inet"), "", public4, rangePort); got != "in the range" {
					t.Fatalf("no range right after the 234: %q", got)
				}
				d.waitLog(t, 5*time.Second, "scoped range closed", "kind", "not_tls")
			}
			time.Sleep(c.wait)
			for _, addr := range []string{public4, dmz4} {
				if got := bannerFrom(natNS("inet"), "", addr, rangePort); got != "" {
					t.Errorf("the client reached the server's passive range at %s: %q", addr, got)
				}
			}
		})
	}
}

// TestHostileFTPSActiveAnyPort: with --ftps-active for the client's
// active ports, an implicit FTPS server may connect from its port 989 to
// those ports of its client while the session is encrypted, and to no
// other (22 and 5900 stay closed).
func TestHostileFTPSActiveAnyPort(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	d := startFtpgate(t, append(ftpsArgs, "--ftps-active", client4+"=50000-50099")...)
	for _, p := range []int{22, 5900, 50050} {
		serveBanner(t, ns("client"), client4, p, "client "+strconv.Itoa(p))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// An implicit FTPS session held open after a login as real clients
	// make it (USER, PASS, PBSZ), which completes its handshake.
	hold := inNS(ctx, "client", "python3", "-c", `import socket,ssl,time
ctx=ssl.create_default_context(); ctx.check_hostname=False; ctx.verify_mode=ssl.CERT_NONE
s=ctx.wrap_socket(socket.create_connection(("198.51.100.20",990),timeout=5))
print(s.recv(100).decode().strip(), flush=True)
for c in (b"USER anonymous", b"PASS x", b"PBSZ 0"):
    s.sendall(c+b"\r\n"); s.recv(100)
time.sleep(8)`)
	startReady(t, hold, "the implicit FTPS session")
	d.waitLog(t, 5*time.Second, "scoped range open", "active_from_989_to", "50000-50099")
	from989 := func(port int) string {
		out, _ := inNS(ctx, "server", "python3", "-c", `import socket,sys
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("198.51.100.20",989)); s.settimeout(2)
try:
    s.connect(("192.0.2.10",int(sys.argv[1]))); print(s.recv(100).decode().strip())
except OSError: pass`, strconv.Itoa(port)).Output()
		return strings.TrimSpace(string(out))
	}
	for _, p := range []int{22, 5900} {
		if got := from989(p); got != "" {
			t.Errorf("the server reached its client's port %d from 989: %q", p, got)
		}
	}
	if got := from989(50050); got != "client 50050" {
		t.Errorf("the server did not reach its client's active port 50050 from 989: %q", got)
	}
}
