package test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestStartupUnderTraffic starts ftpgate, round after round, while FTP
// control traffic already flows through the gateway: sessions that send
// NOOP after NOOP (their copies arrive while ftpgate configures its
// sockets) and new control connections one after another (their SYNs
// are held while it starts). In every round ftpgate must come up and
// stay up, sessions opened before and during its start must be picked
// up and transfer once it is ready, and transfers begun in the first
// second after READY=1 must all work. The loaded variant keeps every core
// but one busy, which stretches the start-up as a slow machine does.
//
// FTPGATE_STARTUP_ROUNDS sets the rounds per variant (default 8).
func TestStartupUnderTraffic(t *testing.T) {
	needLab(t)
	setRuleset(t, "ftpgate")
	rounds := 8
	if s := os.Getenv("FTPGATE_STARTUP_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("FTPGATE_STARTUP_ROUNDS=%q: want a positive number", s)
		}
		rounds = n
	}
	t.Run("idle", func(t *testing.T) {
		for i := range rounds {
			startupRound(t, i)
		}
	})
	t.Run("loaded", func(t *testing.T) {
		if runtime.NumCPU() < 2 {
			t.Skip("skipping: one CPU, no other core to keep busy")
		}
		busyCores(t)
		for i := range rounds {
			startupRound(t, i)
		}
	})
}

// busyCores spins a loop on every core but the first until the test ends.
func busyCores(t *testing.T) {
	t.Helper()
	for cpu := 1; cpu < runtime.NumCPU(); cpu++ {
		cmd := exec.Command("taskset", "-c", strconv.Itoa(cpu), "sh", "-c", "while :; do :; done")
		if err := cmd.Start(); err != nil {
			t.Fatalf("busy loop on core %d: %v", cpu, err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
	}
}

// clientProc is a process in the client namespace.
type clientProc struct {
	name string
	file string // what it downloads to, if it does
	cmd  *exec.Cmd
	out  lockedBuffer
	done chan error
}

// lockedBuffer collects a process's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func startClient(t *testing.T, ctx context.Context, name string, argv ...string) *clientProc {
	t.Helper()
	p := &clientProc{name: name, done: make(chan error, 1)}
	p.cmd = inNS(ctx, "client", argv...)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	return p
}

// wait waits for the process and says how it failed, if it did.
func (p *clientProc) wait() error {
	if err := <-p.done; err != nil {
		return fmt.Errorf("%s: %v: %s", p.name, err, strings.TrimSpace(p.out.String()))
	}
	return nil
}

func startupRound(t *testing.T, round int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	goFile := filepath.Join(dir, "go")

	// Traffic already flowing before ftpgate starts. Those get no
	// transfers (their PASV would have been negotiated unseen): they are
	// the load, and are stopped with the round.
	var background []*clientProc
	for i, host := range []string{server4, server4, server4, server6} {
		background = append(background, startClient(t, ctx, fmt.Sprintf("chatter %d", i), "python3", "ftpclient.py", "chatter", host, "120"))
	}
	background = append(background, startClient(t, ctx, "churn v4", "python3", "ftpclient.py", "churn", server4, "120"))
	background = append(background, startClient(t, ctx, "churn v6", "python3", "ftpclient.py", "churn", server6, "120"))
	// Generous: six Pythons starting at once take seconds in a TCG guest.
	deadline := time.Now().Add(60 * time.Second)
	for _, p := range background {
		for !strings.Contains(p.out.String(), "ready") {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: %s did not start: %s", round, p.name, p.out.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	// Sessions that log in before ftpgate starts and transfer once it is
	// ready: ftpgate picks them up mid-stream.
	var early []*clientProc
	earlySession := func(name, host, mode string) {
		out := filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".bin")
		p := startClient(t, ctx, name, "python3", "ftpclient.py", "get", host, mode, "file.bin", out, "@"+goFile)
		p.file = out
		early = append(early, p)
	}
	earlySession("before start, PASV v4", server4, "pasv")
	earlySession("before start, EPSV v6", server6, "epsv")
	time.Sleep(300 * time.Millisecond) // logged in by now

	d := launchFtpgateIn(t, ns("gw"))
	launchedAt := time.Now()
	// And sessions that connect while ftpgate starts.
	earlySession("during start, PASV v4", server4, "pasv")
	earlySession("during start, EPSV v4", server4, "epsv")
	time.Sleep(20 * time.Millisecond)
	earlySession("during start, EPSV v6", server6, "epsv")
	d.waitReady(t, 30*time.Second)
	readyAt := time.Now()
	t.Logf("round %d: ftpgate ready %v after its start", round, readyAt.Sub(launchedAt).Round(time.Millisecond))
	if err := os.WriteFile(goFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	// Transfers begun in the first second after READY=1, in every mode.
	modes := []func(int) transfer{
		func(i int) transfer {
			return curl(fmt.Sprintf("curl PASV v4 #%d", i), "ftp://"+server4+"/file.bin", "--ftp-pasv", "--disable-epsv")
		},
		func(i int) transfer {
			return curl(fmt.Sprintf("curl EPSV v4 #%d", i), "ftp://"+server4+"/file.bin", "--ftp-pasv")
		},
		func(i int) transfer {
			return curl(fmt.Sprintf("curl EPSV v6 #%d", i), "ftp://["+server6+"]/file.bin", "--ftp-pasv")
		},
		func(i int) transfer {
			return curl(fmt.Sprintf("curl PORT v4 #%d", i), "ftp://"+server4+"/file.bin", "--ftp-port", "-", "--disable-eprt")
		},
		func(i int) transfer {
			return curl(fmt.Sprintf("curl EPRT v6 #%d", i), "ftp://["+server6+"]/file.bin", "--ftp-port", "-")
		},
	}
	var mu sync.Mutex
	var failed []string
	var wg sync.WaitGroup
	for i := 0; i < 10; i++ {
		x := modes[i%len(modes)](i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := x.run(t); err != nil {
				mu.Lock()
				failed = append(failed, fmt.Sprintf("%s (begun %v after READY=1): %v", x.name, time.Since(readyAt).Round(time.Millisecond), err))
				mu.Unlock()
			}
		}()
		time.Sleep(100 * time.Millisecond)
	}
	for _, p := range early {
		if err := p.wait(); err != nil {
			failed = append(failed, err.Error())
			continue
		}
		if data, err := os.ReadFile(p.file); err != nil || sha256.Sum256(data) != fileSum {
			failed = append(failed, fmt.Sprintf("%s: file missing or differs (%v)", p.name, err))
		}
	}
	wg.Wait()
	d.running(t)
	for _, f := range failed {
		t.Errorf("round %d: %s", round, f)
	}
	cancel()
	for _, p := range background {
		<-p.done
	}
	d.stop(t)
	if t.Failed() {
		t.FailNow() // one round's log is enough
	}
}
