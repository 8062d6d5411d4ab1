package test

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Helpers of the hostile tests of the new paths: scripted servers,
// raw sessions, and services that say who they are.

// inNamespace runs a command in the network namespace name.
func inNamespace(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", name}, args...)...)
}

// scripted is a hostileserver.py running for the rest of the test.
type scripted struct {
	mu  sync.Mutex
	out []string // what it printed after "listening"
}

// startScripted starts hostileserver.py in namespace netns.
func startScripted(t *testing.T, netns, addr string, port int, mode string, pasv ...string) *scripted {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	args := append([]string{"python3", "hostileserver.py", addr, strconv.Itoa(port), mode}, pasv...)
	cmd := inNamespace(ctx, netns, args...)
	stdout := startPiped(t, cmd)
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() || sc.Text() != "listening" {
		t.Fatalf("hostileserver.py %s on %s:%d did not start", mode, addr, port)
	}
	s := &scripted{}
	go func() {
		for sc.Scan() {
			s.mu.Lock()
			s.out = append(s.out, sc.Text())
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	return s
}

// waitOutput waits for a line the scripted server printed that starts
// with prefix.
func (s *scripted) waitOutput(t *testing.T, prefix string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		for _, l := range s.out {
			if strings.HasPrefix(l, prefix) {
				s.mu.Unlock()
				return l
			}
		}
		s.mu.Unlock()
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("the scripted server printed no %q within %v", prefix, timeout)
	return ""
}

// serveBanner keeps a service on addr:port in netns for the rest of the
// test that answers every connection with banner: a connection that
// reads it reached that very service.
func serveBanner(t *testing.T, netns, addr string, port int, banner string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	cmd := inNamespace(ctx, netns, "python3", "-c", `import socket,sys,threading
s=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(128)
print('ok', flush=True)
while True:
    c,_=s.accept()
    c.sendall(sys.argv[3].encode()+b'\n')
    c.close()`, addr, strconv.Itoa(port), banner)
	startReady(t, cmd, fmt.Sprintf("the service on %s:%d", addr, port))
}

// bannerFrom connects from netns (from a given source address, if any)
// to addr:port and returns the banner it read, or "" if the connection
// did not get through.
func bannerFrom(netns, from, addr string, port int) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, _ := inNamespace(ctx, netns, "python3", "-c", `import socket,sys
s=socket.socket(socket.AF_INET6 if ':' in sys.argv[2] else socket.AF_INET)
if sys.argv[1]: s.bind((sys.argv[1],0))
s.settimeout(2)
try:
    s.connect((sys.argv[2],int(sys.argv[3])))
    print(s.recv(100).decode().strip())
except OSError:
    pass`, from, addr, strconv.Itoa(port)).Output()
	return strings.TrimSpace(string(out))
}

// rawSession runs `ftpclient.py send` in netns with the given items in
// the background; wait returns what it printed.
func rawSession(t *testing.T, netns, host string, items ...string) (wait func() string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	cmd := inNamespace(ctx, netns, append([]string{"python3", "ftpclient.py", "send", host}, items...)...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return func() string {
		<-done
		return out.String()
	}
}

// hostPorts finds every h1,h2,h3,h4,p1,p2 in s: what a client would take
// from 227 replies.
func hostPorts(s string) [][2]string {
	var out [][2]string
	for _, m := range regexp.MustCompile(`(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)`).FindAllStringSubmatch(s, -1) {
		hi, _ := strconv.Atoi(m[5])
		lo, _ := strconv.Atoi(m[6])
		out = append(out, [2]string{strings.Join(m[1:5], "."), strconv.Itoa(hi*256 + lo)})
	}
	return out
}
