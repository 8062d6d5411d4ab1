// Package test holds ftpgate's end-to-end tests. They run on the lab of
// lab.sh (client, gateway and server namespaces, vsftpd, a default-drop
// ruleset on the gateway) with the real ftpgate binary, real nftables and
// real FTP clients. They need root; without it they skip.
package test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// lab is the namespace prefix of the test lab, distinct from the demo's.
const lab = "ftpge2e"

var (
	labErr   error  // why the lab could not be set up
	bin      string // the ftpgate binary under test
	forgeBin string // the attacker, test/forge
	labDir   string
	fileSum  [32]byte // sha256 of the served file.bin
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if os.Geteuid() != 0 {
		labErr = errNotRoot
		return m.Run()
	}
	tmp, err := os.MkdirTemp("", "ftpgate-e2e")
	if err != nil {
		labErr = err
		return m.Run()
	}
	defer os.RemoveAll(tmp)
	// FTPGATE_BIN runs the tests against another build, such as an
	// earlier commit's, to see which of them it fails.
	bin = os.Getenv("FTPGATE_BIN")
	if bin == "" {
		bin = filepath.Join(tmp, "ftpgate")
		if out, err := exec.Command("go", "build", "-o", bin, "../cmd/ftpgate").CombinedOutput(); err != nil {
			labErr = fmt.Errorf("building ftpgate: %v\n%s", err, out)
			return m.Run()
		}
	}
	// FTPGATE_FORGE likewise: a prebuilt attacker (the VM runner builds
	// both on the host, where go build is fast).
	forgeBin = os.Getenv("FTPGATE_FORGE")
	if forgeBin == "" {
		forgeBin = filepath.Join(tmp, "forge")
		if out, err := exec.Command("go", "build", "-o", forgeBin, "./forge").CombinedOutput(); err != nil {
			labErr = fmt.Errorf("building the attacker: %v\n%s", err, out)
			return m.Run()
		}
	}
	for _, tool := range []string{"ip", "nft", "vsftpd", "curl", "lftp", "python3", "tcpdump", "taskset"} {
		if _, err := exec.LookPath(tool); err != nil {
			labErr = fmt.Errorf("%s is not installed (make test installs it): %w", tool, err)
			return m.Run()
		}
	}
	labDir = filepath.Join(tmp, "lab")
	if out, err := labCmd("up").CombinedOutput(); err != nil {
		labErr = fmt.Errorf("lab.sh up: %v\n%s", err, out)
		return m.Run()
	}
	defer labCmd("down").Run()
	defer natLabDown()
	data, err := os.ReadFile(filepath.Join(labDir, "ftproot", "file.bin"))
	if err != nil {
		labErr = err
		return m.Run()
	}
	fileSum = sha256.Sum256(data)
	return m.Run()
}

var errNotRoot = fmt.Errorf("not root")

func labCmd(args ...string) *exec.Cmd {
	cmd := exec.Command("./lab.sh", args...)
	cmd.Env = append(os.Environ(), "LAB="+lab, "LAB_DIR="+labDir)
	return cmd
}

// needLab skips without root and fails if the lab could not be built.
func needLab(t *testing.T) {
	t.Helper()
	if labErr == errNotRoot {
		t.Skip("skipping: end-to-end tests need root (network namespaces, nftables, packet capture)")
	}
	if labErr != nil {
		t.Fatalf("lab: %v", labErr)
	}
}

// setRuleset loads the gateway ruleset: "ftpgate", "kernel" or "none".
func setRuleset(t *testing.T, mode string) {
	t.Helper()
	if out, err := labCmd("ruleset", mode).CombinedOutput(); err != nil {
		t.Fatalf("lab.sh ruleset %s: %v\n%s", mode, err, out)
	}
}

func ns(role string) string { return lab + "-" + role }

// inNS runs a command in a lab namespace with a deadline.
func inNS(ctx context.Context, role string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns(role)}, args...)...)
}

// startPiped starts cmd and hands back its standard output.
func startPiped(t *testing.T, cmd *exec.Cmd) io.Reader {
	t.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %v: %v", cmd.Args, err)
	}
	return out
}

func nft(t *testing.T, args ...string) string {
	t.Helper()
	out, err := inNS(context.Background(), "gw", append([]string{"nft"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("nft %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// droppedSYNs reads the gateway's counter of SYNs its forward chain dropped.
func droppedSYNs(t *testing.T, counter string) int {
	t.Helper()
	out := nft(t, "list", "counter", "inet", "filter", counter)
	var n int
	if i := strings.Index(out, "packets "); i >= 0 {
		fmt.Sscanf(out[i:], "packets %d", &n)
	}
	return n
}

// daemon is an ftpgate process on the gateway.
type daemon struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs []map[string]any
	raw  bytes.Buffer
	done chan error
	// exited is closed when the process has exited, with its status in
	// exitErr; ready when it sent READY=1 to its NOTIFY_SOCKET.
	exited  chan struct{}
	exitErr error
	ready   chan struct{}
}

func startFtpgate(t *testing.T, args ...string) *daemon {
	t.Helper()
	return startFtpgateIn(t, ns("gw"), args...)
}

// startFtpgateIn starts ftpgate run in the namespace netns and waits
// until it is ready.
func startFtpgateIn(t *testing.T, netns string, args ...string) *daemon {
	t.Helper()
	d := launchFtpgateIn(t, netns, args...)
	d.waitReady(t, 20*time.Second)
	return d
}

// launchFtpgateIn starts ftpgate run in the namespace netns, as systemd
// would start the unit (Type=notify): with a NOTIFY_SOCKET on which it
// says when it is ready. It does not wait for that.
func launchFtpgateIn(t *testing.T, netns string, args ...string) *daemon {
	t.Helper()
	d := &daemon{done: make(chan error, 1), exited: make(chan struct{}), ready: make(chan struct{})}
	// A path, not an abstract name: those are per network namespace.
	dir, err := os.MkdirTemp("", "ftpgate-notify")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	notify := filepath.Join(dir, "notify.sock")
	nc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		t.Fatalf("notify socket: %v", err)
	}
	t.Cleanup(func() { nc.Close() })
	go func() {
		b := make([]byte, 4096)
		for {
			n, err := nc.Read(b)
			if err != nil {
				return
			}
			if slices.Contains(strings.Split(string(b[:n]), "\n"), "READY=1") {
				select {
				case <-d.ready:
				default:
					close(d.ready)
				}
			}
		}
	}()
	argv := append([]string{"netns", "exec", netns, bin, "run", "--log-format", "json"}, args...)
	d.cmd = exec.Command("ip", argv...)
	d.cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notify)
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var m map[string]any
			d.mu.Lock()
			d.raw.Write(sc.Bytes())
			d.raw.WriteByte('\n')
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				d.logs = append(d.logs, m)
			}
			d.mu.Unlock()
		}
		err := d.cmd.Wait()
		d.exitErr = err
		close(d.exited)
		d.done <- err
	}()
	t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			d.stop(t)
		}
		if t.Failed() {
			d.mu.Lock()
			t.Logf("ftpgate log:\n%s", d.raw.String())
			d.mu.Unlock()
		}
	})
	return d
}

// waitReady waits for READY=1 (timeout times slow), and fails if
// ftpgate exits first.
func (d *daemon) waitReady(t *testing.T, timeout time.Duration) {
	t.Helper()
	timeout *= time.Duration(slow)
	select {
	case <-d.ready:
	case <-d.exited:
		t.Fatalf("ftpgate exited before it was ready: %v", d.exitErr)
	case <-time.After(timeout):
		t.Fatalf("ftpgate sent no READY=1 within %v", timeout)
	}
}

// running fails the test if ftpgate has exited.
func (d *daemon) running(t *testing.T) {
	t.Helper()
	select {
	case <-d.exited:
		t.Fatalf("ftpgate exited: %v", d.exitErr)
	default:
	}
}

// stop sends SIGTERM and requires exit status 0.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.done:
		if err != nil {
			t.Errorf("ftpgate exited with %v after SIGTERM, want 0", err)
		}
	case <-time.After(time.Duration(10*slow) * time.Second):
		_ = d.cmd.Process.Kill()
		t.Errorf("ftpgate did not exit within %ds of SIGTERM", 10*slow)
	}
}

// find returns the log records with this message whose fields match.
func (d *daemon) find(msg string, fields ...string) []map[string]any {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []map[string]any
next:
	for _, m := range d.logs {
		if m["msg"] != msg {
			continue
		}
		for i := 0; i+1 < len(fields); i += 2 {
			if fmt.Sprint(m[fields[i]]) != fields[i+1] {
				continue next
			}
		}
		out = append(out, m)
	}
	return out
}

// waitLog waits for a log record with this message and fields (timeout
// times slow).
func (d *daemon) waitLog(t *testing.T, timeout time.Duration, msg string, fields ...string) map[string]any {
	t.Helper()
	timeout *= time.Duration(slow)
	deadline := time.Now().Add(timeout)
	for {
		if r := d.find(msg, fields...); len(r) > 0 {
			return r[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log %q %v within %v", msg, fields, timeout) // the cleanup prints the log
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pinholes lists the elements of both pinhole sets on the gateway.
func pinholes(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, set := range []string{"ftp_data_pinholes_v4", "ftp_data_pinholes_v6"} {
		text := nft(t, "list", "set", "inet", "ftpgate", set)
		i := strings.Index(text, "elements = {")
		if i < 0 {
			continue
		}
		body := text[i+len("elements = {"):]
		body = body[:strings.Index(body, "}")]
		for _, e := range strings.Split(body, ",") {
			if e = strings.TrimSpace(e); e != "" {
				out = append(out, e)
			}
		}
	}
	return out
}

// waitPinholes waits until the sets hold n pinholes (a new one reaches
// the kernel up to --commit-delay after its channel opened) and returns
// what they hold then, or at the deadline.
func waitPinholes(t *testing.T, n int, timeout time.Duration) []string {
	t.Helper()
	timeout *= time.Duration(slow)
	deadline := time.Now().Add(timeout)
	for {
		p := pinholes(t)
		if len(p) == n || time.Now().After(deadline) {
			return p
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitNoPinholes waits until both sets are empty.
func waitNoPinholes(t *testing.T, timeout time.Duration) {
	t.Helper()
	timeout *= time.Duration(slow)
	deadline := time.Now().Add(timeout)
	for {
		p := pinholes(t)
		if len(p) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pinholes still open after %v: %v", timeout, p)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func tableExists(t *testing.T) bool {
	t.Helper()
	return strings.Contains(nft(t, "list", "tables"), "table inet ftpgate")
}

// transfer is one download by one client in one mode.
type transfer struct {
	name string
	argv []string // in the client namespace; writes the file to OUT
	// netns, if set, is the namespace to run in instead, and sum the
	// checksum of the file it fetches.
	netns string
	sum   *[32]byte
}

// slow scales the clients' timeouts: 1 on a real machine, 4 in the VM
// of test/vm (FTPGATE_VM=1), whose emulated CPUs run two dozen
// concurrent transfers several times slower. (curl's --connect-timeout
// also bounds FTP's data connection setup, 3 s of it the proxied
// control connection's retried SYN can take under TCG.) It bounds how
// long a client waits, never what a test asserts.
var slow = func() int {
	if os.Getenv("FTPGATE_VM") == "1" {
		return 4
	}
	return 1
}()

func curl(name, url string, flags ...string) transfer {
	argv := append([]string{"curl", "-sS", "--max-time", fmt.Sprint(8 * slow), "--connect-timeout", fmt.Sprint(3 * slow), "-o", "OUT"}, flags...)
	return transfer{name: name, argv: append(argv, url)}
}

func ftplib(name, host, mode string) transfer {
	return transfer{name: name, argv: []string{"python3", "ftpclient.py", "get", host, mode, "file.bin", "OUT"}}
}

func lftp(name, host string, passive bool) transfer {
	mode := "off"
	if passive {
		mode = "on"
	}
	script := fmt.Sprintf("set ftp:passive-mode %s; set ftp:prefer-epsv no; set net:max-retries 1; set net:timeout %d; set net:reconnect-interval-base 1; get file.bin -o OUT; bye", mode, 4*slow)
	return transfer{name: name, argv: []string{"lftp", "-e", script, "ftp://" + host}}
}

// run performs the transfer and reports whether the file arrived intact.
func (x transfer) run(t *testing.T) error {
	out := filepath.Join(t.TempDir(), strings.NewReplacer(" ", "-", "/", "-").Replace(x.name)+".bin")
	argv := make([]string, len(x.argv))
	for i, a := range x.argv {
		argv[i] = strings.ReplaceAll(a, "OUT", out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(20*slow)*time.Second)
	defer cancel()
	cmd := inNS(ctx, "client", argv...)
	if x.netns != "" {
		cmd = exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", x.netns}, argv...)...)
	}
	b, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, bytes.TrimSpace(b))
	}
	data, err := os.ReadFile(out)
	if err != nil {
		return err
	}
	want := fileSum
	if x.sum != nil {
		want = *x.sum
	}
	if sha256.Sum256(data) != want {
		return fmt.Errorf("file differs (%d bytes)", len(data))
	}
	return nil
}

// runAll runs transfers concurrently and returns their errors by name.
func runAll(t *testing.T, xs []transfer) map[string]error {
	var mu sync.Mutex
	errs := map[string]error{}
	var wg sync.WaitGroup
	for _, x := range xs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := x.run(t)
			mu.Lock()
			errs[x.name] = err
			mu.Unlock()
		}()
	}
	wg.Wait()
	return errs
}
