package test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The hostile suite's denial of service: no single source may take a cap
// that others need, nothing outlives the timeouts, and cheap input is
// charged to its own session. Each test has a second, legitimate client
// keep working.

// addAddrs gives netns's device the addresses, for the rest of the test.
func addAddrs(t *testing.T, netns, dev string, addrs ...string) {
	t.Helper()
	for _, a := range addrs {
		plen := "/24"
		if strings.Contains(a, ":") {
			plen = "/64"
		}
		if out, err := exec.Command("ip", "-n", netns, "addr", "replace", a+plen, "dev", dev, "nodad").CombinedOutput(); err != nil {
			t.Fatalf("adding %s: %v %s", a, err, out)
		}
		t.Cleanup(func() { _ = exec.Command("ip", "-n", netns, "addr", "del", a+plen, "dev", dev).Run() })
	}
}

// statusOf asks a running ftpgate for its counters.
func statusOf(t *testing.T, sock string) map[string]float64 {
	t.Helper()
	b, err := exec.Command(bin, "status", "--socket", sock, "--format", "json").CombinedOutput()
	if err != nil {
		t.Fatalf("ftpgate status: %v\n%s", err, b)
	}
	var st struct {
		Counters map[string]float64 `json:"counters"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	return st.Counters
}

// holdConns opens n TCP connections from netns (from address src) to
// addr:port and keeps them; each reads what arrives. ready returns once
// all tried; greeted says how many got a greeting, closed how many the
// far side closed since.
type heldConns struct {
	cmd *exec.Cmd
	mu  sync.Mutex
	out []string
}

func holdConns(t *testing.T, netns, src, addr string, port, n int, secs int) *heldConns {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs+20)*time.Second)
	t.Cleanup(cancel)
	cmd := inNamespace(ctx, netns, "python3", "-c", `import socket,sys,threading,time
src,addr,port,n,secs=sys.argv[1],sys.argv[2],int(sys.argv[3]),int(sys.argv[4]),float(sys.argv[5])
lock=threading.Lock(); greeted=0; closed=0; socks=[]
def one():
    global greeted, closed
    s=socket.socket(socket.AF_INET6 if ':' in addr else socket.AF_INET)
    if src: s.bind((src,0))
    s.settimeout(5)
    try:
        s.connect((addr,port))
        if not s.recv(100):
            return
        with lock: greeted+=1
    except OSError:
        return
    s.settimeout(secs)
    socks.append(s)
    try:
        s.recv(100)
        with lock: closed+=1
    except socket.timeout:
        pass
    except OSError:
        with lock: closed+=1
ts=[threading.Thread(target=one,daemon=True) for _ in range(n)]
for x in ts: x.start()
time.sleep(6)
print("greeted", greeted, flush=True)
end=time.time()+secs
while time.time()<end:
    time.sleep(0.5)
    print("closed", closed, flush=True)`, src, addr, strconv.Itoa(port), strconv.Itoa(n), strconv.Itoa(secs))
	stdout := startPiped(t, cmd)
	h := &heldConns{cmd: cmd}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			h.mu.Lock()
			h.out = append(h.out, sc.Text())
			h.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	return h
}

// last returns the latest count printed with this word, waiting for one.
func (h *heldConns) last(t *testing.T, word string) int {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		h.mu.Lock()
		for i := len(h.out) - 1; i >= 0; i-- {
			if f := strings.Fields(h.out[i]); len(f) == 2 && f[0] == word {
				n, _ := strconv.Atoi(f[1])
				h.mu.Unlock()
				return n
			}
		}
		h.mu.Unlock()
	}
	t.Fatalf("no %q count", word)
	return 0
}

// TestHostileProxyShares: one internet host holding 60 idle connections
// to the forwarded port 21 takes its share of --max-proxied 50, and LAN
// and DMZ sessions keep working; a burst of 200 connections from 20
// hosts never gets more than 50 through the proxy at once.
func TestHostileProxyShares(t *testing.T) {
	needNATLab(t)
	setNATRuleset(t, "ftpgate")
	sock := filepath.Join(t.TempDir(), "status.sock")
	startFtpgateIn(t, natNS("gw"), "--control-ports", "21,2121,2122", "--max-proxied", "50", "--status-socket", sock, "--nat-path", "proxy")
	addAddrs(t, natNS("inet"), natLab+"-i0", "203.0.113.66")
	hog := holdConns(t, natNS("inet"), "203.0.113.66", public4, 21, 60, 30)
	if n := hog.last(t, "greeted"); n > 4 {
		t.Errorf("one host got %d proxied sessions, more than its share of 4", n)
	}
	for name, err := range runAll(t, natTransfers()[:2]) {
		if err != nil {
			t.Errorf("LAN %s while one host holds the proxy: %v", name, err)
		}
	}
	if err := in("inet", curl("internet curl PASV", "ftp://"+public4+"/file.bin", "--ftp-pasv", "--disable-epsv")).run(t); err != nil {
		t.Errorf("internet client while one host holds the proxy: %v", err)
	}
	var burst []string
	for i := range 20 {
		burst = append(burst, fmt.Sprintf("203.0.113.%d", 100+i))
	}
	addAddrs(t, natNS("inet"), natLab+"-i0", burst...)
	var conns []*heldConns
	for _, a := range burst {
		conns = append(conns, holdConns(t, natNS("inet"), a, public4, 21, 10, 10))
	}
	total := 0
	for _, c := range conns {
		total += c.last(t, "greeted")
	}
	if held := statusOf(t, sock)["proxied"]; held > 50 || total > 50 {
		t.Errorf("after a burst of 200: %v proxied, %d connections greeted; the cap is 50", held, total)
	}
}

// TestHostilePacketPathShares: the same hog and burst against the NAT
// packet path: one host holding 60 connections has at most its share of
// 4 followed (the rest go on untranslated, and are no longer queued),
// LAN and internet sessions keep working, and of a burst of 200 from 20
// hosts no more than --max-proxied 50 are followed at once.
func TestHostilePacketPathShares(t *testing.T) {
	needNATLab(t)
	setNATRuleset(t, "ftpgate")
	sock := filepath.Join(t.TempDir(), "status.sock")
	startFtpgateIn(t, natNS("gw"), "--control-ports", "21,2121,2122", "--max-proxied", "50", "--status-socket", sock)
	addAddrs(t, natNS("inet"), natLab+"-i0", "203.0.113.67")
	hog := holdConns(t, natNS("inet"), "203.0.113.67", public4, 21, 60, 30)
	hog.last(t, "greeted")
	if held := statusOf(t, sock)["proxied"]; held > 4 {
		t.Errorf("one host has %v sessions followed, more than its share of 4", held)
	}
	for name, err := range runAll(t, natTransfers()[:2]) {
		if err != nil {
			t.Errorf("LAN %s while one host holds its share: %v", name, err)
		}
	}
	if err := in("inet", curl("internet curl PASV", "ftp://"+public4+"/file.bin", "--ftp-pasv", "--disable-epsv")).run(t); err != nil {
		t.Errorf("internet client while one host holds its share: %v", err)
	}
	var burst []string
	for i := range 20 {
		burst = append(burst, fmt.Sprintf("203.0.113.%d", 130+i))
	}
	addAddrs(t, natNS("inet"), natLab+"-i0", burst...)
	var conns []*heldConns
	for _, a := range burst {
		conns = append(conns, holdConns(t, natNS("inet"), a, public4, 21, 10, 10))
	}
	for _, c := range conns {
		c.last(t, "greeted")
	}
	if held := statusOf(t, sock)["proxied"]; held > 50 {
		t.Errorf("after a burst of 200: %v sessions followed; the cap is 50", held)
	}
}

// TestHostileProxiedExpire: proxied sessions that go idle, also after
// their server closed, end on --idle-timeout, whatever their state.
func TestHostileProxiedExpire(t *testing.T) {
	needNATLab(t)
	setNATRuleset(t, "ftpgate")
	sock := filepath.Join(t.TempDir(), "status.sock")
	startFtpgateIn(t, natNS("gw"), "--control-ports", "21,2121,2122", "--idle-timeout", "2s", "--status-socket", sock, "--nat-path", "proxy")
	idle := holdConns(t, natNS("inet"), "", public4, 21, 10, 10)
	quit := rawSession(t, natNS("inet"), public4+":21", "@read", "QUIT\r\n", "@read", "@sleep=8")
	if n := idle.last(t, "greeted"); n != 10 {
		t.Fatalf("%d of 10 idle connections greeted", n)
	}
	time.Sleep(2 * time.Second)
	if n := idle.last(t, "closed"); n != 10 {
		t.Errorf("%d of 10 idle proxied connections closed after the idle timeout", n)
	}
	if held := statusOf(t, sock)["proxied"]; held != 0 {
		t.Errorf("%v proxied sessions left after the idle timeout (one whose server said 221 among them)", held)
	}
	_ = quit
}

// TestHostileSessionShare: one client address holding 50 sessions with
// --max-sessions 50 takes its share, and another client's transfers work.
func TestHostileSessionShare(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	startFtpgate(t, "--max-sessions", "50")
	addAddrs(t, ns("client"), lab+"-c0", "192.0.2.12")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	hog := inNS(ctx, "client", "python3", "ftpclient.py", "idle", server4, "50", "30", client4)
	startReady(t, hog, "50 idle sessions")
	for _, x := range []transfer{
		curl("curl PASV from another client", "ftp://"+server4+"/file.bin", "--interface", "192.0.2.12", "--ftp-pasv", "--disable-epsv"),
		curl("curl PORT from another client", "ftp://"+server4+"/file.bin", "--interface", "192.0.2.12", "--ftp-port", "-", "--disable-eprt"),
	} {
		if err := x.run(t); err != nil {
			t.Errorf("%s while one client holds 50 sessions: %v", x.name, err)
		}
	}
}

// TestHostileScopedShareIPv6: 20 idle FTPS sessions from 20 addresses of
// one IPv6 /64 take that /64's share of --max-scoped 20; FTPS from
// another client works.
func TestHostileScopedShareIPv6(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	d := startFtpgate(t, "--ftps-passive-ports", server4+"="+ftpsRange+","+server6+"="+ftpsRange, "--control-ports", "21,2141",
		"--max-scoped", "20")
	var addrs []string
	for i := range 20 {
		addrs = append(addrs, fmt.Sprintf("2001:db8:1::%x", 0x100+i))
	}
	addAddrs(t, ns("client"), lab+"-c0", addrs...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for _, a := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = inNS(ctx, "client", "python3", "ftpclient.py", "tlshold", "["+server6+"]:2141", "10", a).Run()
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(d.find("scoped range open"))+len(d.find("scoped range refused: this client has reached its cap (per address, per /64 for IPv6)")) < 20 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if n := len(d.find("scoped range open")); n != 8 {
		t.Errorf("one /64 holds %d scoped ranges, want its share of 8", n)
	}
	if err := ftpsTransfers()[0].run(t); err != nil {
		t.Errorf("FTPS from another client while one /64 holds its share: %v", err)
	}
	cancel()
	wg.Wait()
}

// TestHostileLFFlood: 100 Mbit/s of bare LF on one control connection,
// while real transfers run beside it: none of them is slow (no SYN waits
// for a retransmission) and none fails.
func TestHostileLFFlood(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	d := startFtpgate(t, "--control-ports", "21,2137")
	startScripted(t, ns("server"), server4, 2137, "discard")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Segments of one line's worth each (TCP_NODELAY, paced), as a
	// client typing fast sends them: every one is a copy to ftpgate.
	flood := inNS(ctx, "client", "python3", "-c", `import socket,time
s=socket.create_connection(("198.51.100.20",2137)); s.recv(100)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
chunk=b"\n"*1400; rate=12.5e6; sent=0; start=time.time()
print("flooding", flush=True)
while time.time()-start<15:
    s.send(chunk); sent+=len(chunk)
    ahead=sent/rate-(time.time()-start)
    if ahead>0.001: time.sleep(ahead)
print("sent", sent, "in", round(time.time()-start,1), flush=True)`)
	out := startPiped(t, flood)
	sc := bufio.NewScanner(out)
	sc.Scan()
	time.Sleep(time.Second)
	type result struct {
		name string
		out  string
		err  error
	}
	res := make(chan result)
	loads := [][2]string{{server4, "pasv"}, {server4, "port"}, {server6, "epsv"}, {server6, "eprt"}}
	for _, l := range loads {
		go func() {
			b, err := inNS(ctx, "client", "python3", "ftpclient.py", "timedload", l[0], l[1], "empty.txt", "30").CombinedOutput()
			res <- result{l[0] + " " + l[1], strings.TrimSpace(string(b)), err}
		}()
	}
	for range loads {
		r := <-res
		var ok, slowest int
		fmt.Sscanf(lastLine(r.out), "ok %d slowest %d", &ok, &slowest)
		if r.err != nil || ok != 30 || slowest >= 900 {
			t.Errorf("%s beside the flood: %d of 30, slowest %d ms (%v): %s", r.name, ok, slowest, r.err, r.out)
		}
	}
	for sc.Scan() {
		t.Logf("flood: %s", sc.Text())
	}
	_ = flood.Wait()
	t.Logf("ftpgate: %s", processCost(d.cmd.Process.Pid))
	// Nothing of the other sessions was lost on the way: the copies of
	// the flood did not overflow the socket they share.
	d.stop(t)
	r := d.waitLog(t, 5*time.Second, "ftpgate stopped")
	if fmt.Sprint(r["copy_overflows"]) != "0" || fmt.Sprint(r["gap_bytes"]) != "0" {
		t.Errorf("copies lost beside the flood: %v overflows, %v bytes of sessions lost", r["copy_overflows"], r["gap_bytes"])
	}
	if n, _ := strconv.ParseFloat(fmt.Sprint(r["lines"]), 64); n < 150e6 {
		t.Errorf("%v lines read of the flood's 187 million: the rest was not looked at", r["lines"])
	}
}
