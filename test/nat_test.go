package test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftpgate/ftpgate/internal/netnstest"
)

// The NAT lab (natlab.sh): a LAN behind masquerade, a DMZ server behind
// a port forward, and an internet host that cannot route to either.
const natLab = "ftpnat"

const (
	inetServer4 = "203.0.113.10" // vsftpd on the internet host
	inetServer6 = "2001:db8:3::10"
	public4     = "203.0.113.1" // the gateway's public address, forwarded to the DMZ
	public6     = "2001:db8:3::1"
)

var (
	natOnce    sync.Once
	natErr     error
	natDir     string
	natFileSum [32]byte
)

func natLabCmd(args ...string) *exec.Cmd {
	cmd := exec.Command("./natlab.sh", args...)
	cmd.Env = append(os.Environ(), "LAB="+natLab, "LAB_DIR="+natDir)
	return cmd
}

// needNATLab builds the NAT lab on first use; runMain takes it down.
func needNATLab(t *testing.T) {
	t.Helper()
	needLab(t)
	natOnce.Do(func() {
		natDir = filepath.Join(filepath.Dir(labDir), "natlab")
		if out, err := natLabCmd("up").CombinedOutput(); err != nil {
			natErr = fmt.Errorf("natlab.sh up: %v\n%s", err, out)
			return
		}
		data, err := os.ReadFile(filepath.Join(natDir, "ftproot", "file.bin"))
		if err != nil {
			natErr = err
			return
		}
		natFileSum = sha256.Sum256(data)
	})
	if natErr != nil {
		t.Fatalf("NAT lab: %v", natErr)
	}
}

// natLabDown is called by runMain after the tests.
func natLabDown() {
	if natDir != "" {
		_ = natLabCmd("down").Run()
	}
}

func natNS(role string) string { return natLab + "-" + role }

func setNATRuleset(t *testing.T, mode string) {
	t.Helper()
	if out, err := natLabCmd("ruleset", mode).CombinedOutput(); err != nil {
		t.Fatalf("natlab.sh ruleset %s: %v\n%s", mode, err, out)
	}
}

func natNft(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", natNS("gw"), "nft"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("nft %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// in runs a transfer from a NAT lab host.
func in(role string, x transfer) transfer {
	x.netns, x.sum = natNS(role), &natFileSum
	return x
}

// natTransfers is the matrix of the issue: curl in every mode, lftp and
// ftplib active and passive, both ways (a LAN client behind masquerade to
// a server on the internet; an internet client to the DMZ server behind
// the port forward), the DMZ server that announces the public address
// itself, and a server on a port other than 21.
func natTransfers() []transfer {
	srv4, srv6 := "ftp://"+inetServer4+"/file.bin", "ftp://["+inetServer6+"]/file.bin"
	pub4, pub6 := "ftp://"+public4+"/file.bin", "ftp://["+public6+"]/file.bin"
	return []transfer{
		in("lan", curl("LAN curl PASV v4", srv4, "--ftp-pasv", "--disable-epsv")),
		in("lan", curl("LAN curl EPSV v4", srv4, "--ftp-pasv")),
		in("lan", curl("LAN curl PORT v4", srv4, "--ftp-port", "-", "--disable-eprt")),
		in("lan", curl("LAN curl EPRT v4", srv4, "--ftp-port", "-")),
		in("lan", curl("LAN curl EPSV v6", srv6, "--ftp-pasv")),
		in("lan", curl("LAN curl EPRT v6", srv6, "--ftp-port", "-")),
		in("lan", lftp("LAN lftp passive", inetServer4, true)),
		in("lan", lftp("LAN lftp active", inetServer4, false)),
		in("lan", ftplib("LAN ftplib PASV", inetServer4, "pasv")),
		in("lan", ftplib("LAN ftplib PORT", inetServer4, "port")),
		in("lan", ftplib("LAN ftplib EPRT v6", inetServer6, "eprt")),
		in("inet", curl("internet curl PASV v4", pub4, "--ftp-pasv", "--disable-epsv")),
		in("inet", curl("internet curl EPSV v4", pub4, "--ftp-pasv")),
		in("inet", curl("internet curl PORT v4", pub4, "--ftp-port", "-", "--disable-eprt")),
		in("inet", curl("internet curl EPRT v4", pub4, "--ftp-port", "-")),
		in("inet", curl("internet curl EPSV v6", pub6, "--ftp-pasv")),
		in("inet", curl("internet curl EPRT v6", pub6, "--ftp-port", "-")),
		in("inet", lftp("internet lftp passive", public4, true)),
		in("inet", lftp("internet lftp active", public4, false)),
		in("inet", ftplib("internet ftplib PASV", public4, "pasv")),
		in("inet", ftplib("internet ftplib PORT", public4, "port")),
		in("inet", curl("internet curl PASV to pasv_address server", "ftp://"+public4+":2122/file.bin", "--ftp-pasv", "--disable-epsv")),
		in("inet", curl("internet curl PASV port 2121", "ftp://"+public4+":2121/file.bin", "--ftp-pasv", "--disable-epsv")),
		in("inet", curl("internet curl PORT port 2121", "ftp://"+public4+":2121/file.bin", "--ftp-port", "-", "--disable-eprt")),
	}
}

func names(errs map[string]error, ok bool) []string {
	var out []string
	for n, err := range errs {
		if (err == nil) == ok {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// TestNATTransfersFailWithoutHelper: the control experiment. Only the
// admin's NAT and filter, no helper: every transfer must fail, or the
// lab proves nothing.
func TestNATTransfersFailWithoutHelper(t *testing.T) {
	needNATLab(t)
	setNATRuleset(t, "none")
	errs := runAll(t, natTransfers())
	if ok := names(errs, true); len(ok) > 0 {
		t.Errorf("worked without any helper: %v", ok)
	}
}

// TestNATTransfersKernel runs the matrix through the kernel's
// nf_conntrack_ftp and nf_nat_ftp, for comparison: what it cannot do is
// stated in the README, and checked here.
func TestNATTransfersKernel(t *testing.T) {
	needNATLab(t)
	setNATRuleset(t, "kernel")
	errs := runAll(t, natTransfers())
	ok, failed := names(errs, true), names(errs, false)
	t.Logf("kernel helper: %d of %d transfers work; failed: %v", len(ok), len(errs), failed)
	if errs["internet curl PASV to pasv_address server"] == nil {
		t.Errorf("the kernel helper handled a server announcing the public address; the README says it refuses it")
	}
}

// TestNATTransfersEveryMode runs the matrix through ftpgate's packet
// path (the default), with the admin's rules unchanged and no NAT
// setting given to ftpgate; then nothing may be left in the kernel.
//
// No SYN of a translated control connection is dropped, so none is sent
// again: the gateway counts every control SYN that comes in (the admin's
// prerouting counter) and sees one per session; so does ftpgate's detect
// chain, which finds them translated.
func TestNATTransfersEveryMode(t *testing.T) {
	needNATLab(t)
	setNATRuleset(t, "ftpgate")
	d := startFtpgateIn(t, natNS("gw"), "--control-ports", "21,2121,2122")
	checkNATPacketPath(t, d, "shifted by ftpgate")
}

// TestNATTransfersKernelShift runs the matrix with the kernel shifting
// translated IPv4 connections' sequence numbers (--nat-shift kernel),
// where it can: the NFQUEUE glue and userspace helpers (Debian's 6.1 in
// the VM; not this project's host).
func TestNATTransfersKernelShift(t *testing.T) {
	needNATLab(t)
	needKernelShift(t)
	setNATRuleset(t, "ftpgate")
	d := startFtpgateIn(t, natNS("gw"), "--control-ports", "21,2121,2122", "--nat-shift", "kernel")
	checkNATPacketPath(t, d, "shifted by the kernel")
}

// needKernelShift skips where the kernel cannot shift for ftpgate.
func needKernelShift(t *testing.T) {
	t.Helper()
	kcfg := netnstest.KernelConfig(t)
	if kcfg["CONFIG_NETFILTER_NETLINK_GLUE_CT"] != "y" || kcfg["CONFIG_NF_CT_NETLINK_HELPER"] == "" || !modulesPresent() {
		t.Skip("this kernel cannot shift sequence numbers for ftpgate (no NFQUEUE glue or no userspace helpers): the VM matrix runs this on Debian's 6.1")
	}
}

// checkNATPacketPath checks, through a running ftpgate in the packet
// path, who shifts (the kernel line), the matrix's transfers, and one
// control SYN per translated session.
func checkNATPacketPath(t *testing.T, d *daemon, who string) {
	t.Helper()
	if k := d.find("kernel"); len(k) == 0 || !strings.Contains(fmt.Sprint(k[0]["nat"]), who) {
		t.Errorf("the kernel line does not say the sequence numbers are %s: %v", who, k)
	}
	n := checkNATTransfers(t, d, "packet")
	if syns := natCounter(t, "control_syn"); syns != n {
		t.Errorf("the gateway saw %d control SYNs for %d translated sessions: SYNs were sent again", syns, n)
	}
	if syns := natDetectedSYNs(t); syns != n {
		t.Errorf("the detect chain saw %d SYNs of translated control connections for %d sessions", syns, n)
	}
	waitNATClean(t, 10*time.Second)
}

// modulesPresent says whether the running kernel's modules can be loaded
// (the host of this project has its =m options without the modules).
func modulesPresent() bool {
	var u unix.Utsname
	_ = unix.Uname(&u)
	_, err := os.Stat("/lib/modules/" + unix.ByteSliceToString(u.Release[:]) + "/modules.dep")
	return err == nil
}

// TestNATTransfersProxy runs the matrix through the control proxy
// (--nat-path proxy), which takes each translated control connection
// over from the client's SYN retry.
func TestNATTransfersProxy(t *testing.T) {
	needNATLab(t)
	setNATRuleset(t, "ftpgate")
	d := startFtpgateIn(t, natNS("gw"), "--control-ports", "21,2121,2122", "--nat-path", "proxy")
	n := checkNATTransfers(t, d, "proxy")
	t.Logf("through the control proxy: %d control SYNs for %d sessions (each first one dropped)", natCounter(t, "control_syn"), n)
	waitNATClean(t, 10*time.Second)
}

// checkNATTransfers runs the matrix through a running ftpgate whose NAT
// runs in path, and returns how many sessions it translated.
func checkNATTransfers(t *testing.T, d *daemon, path string) int {
	t.Helper()
	before := natDroppedSYNs(t)
	errs := runAll(t, natTransfers())
	for _, name := range names(errs, false) {
		t.Errorf("%s: %v", name, errs[name])
	}
	// No data SYN beat its mapping: none reached the admin's drop. (A
	// retransmitted SYN would still make the transfer work, a second
	// later.)
	if after := natDroppedSYNs(t); after != before {
		t.Errorf("the admin's rules dropped %d SYNs during the transfers: data connections that came before their mapping", after-before)
	}
	// Each kind of translation showed up in the logs.
	n := len(d.find("session start", "nat_path", path, "translated", "true"))
	if n < len(errs) {
		t.Errorf("%d sessions in the %s path for %d transfers", n, path, len(errs))
	}
	rewritten := 0
	for _, r := range d.find("channel open") {
		if r["nat_h"] != nil && fmt.Sprint(r["nat_h"]) == public4 {
			rewritten++
		}
	}
	if rewritten == 0 {
		t.Error("no channel was logged with its translated address")
	}
	return n
}

// natDetectedSYNs reads the counters of ftpgate's detect chain: the SYNs
// of new translated control connections.
func natDetectedSYNs(t *testing.T) int {
	t.Helper()
	total := 0
	out := natNft(t, "list", "chain", "inet", "ftpgate", "detect_translated_ftp_control")
	for rest := out; ; {
		i := strings.Index(rest, "counter packets ")
		if i < 0 {
			break
		}
		var n int
		fmt.Sscanf(rest[i:], "counter packets %d", &n)
		total += n
		rest = rest[i+1:]
	}
	return total
}

// natDroppedSYNs reads the gateway's counters of SYNs its forward and
// input chains dropped.
func natDroppedSYNs(t *testing.T) int {
	t.Helper()
	return natCounter(t, "dropped_syn") + natCounter(t, "dropped_syn_input")
}

// natCounter reads one of the gateway's named counters (natlab.sh).
func natCounter(t *testing.T, name string) int {
	t.Helper()
	out := natNft(t, "list", "counter", "inet", "filter", name)
	var n int
	if i := strings.Index(out, "packets "); i >= 0 {
		fmt.Sscanf(out[i:], "packets %d", &n)
	}
	return n
}

// natKernelState lists what ftpgate holds in the kernel for data
// connections: pinholes and NAT map elements.
func natKernelState(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, obj := range []string{"set ftp_data_pinholes_v4", "set ftp_data_pinholes_v6", "map ftp_data_dnat_v4",
		"map ftp_data_dnat_v6", "map ftp_data_snat_v4", "map ftp_data_snat_v6", "set ftps_ranges_v4", "map ftps_dnat_v4"} {
		kind, name, _ := strings.Cut(obj, " ")
		text := natNft(t, "list", kind, "inet", "ftpgate", name)
		if i := strings.Index(text, "elements = {"); i >= 0 {
			out = append(out, obj+": "+strings.Join(strings.Fields(text[i:strings.Index(text[i:], "}")+i]), " "))
		}
	}
	return out
}

func waitNATClean(t *testing.T, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		left := natKernelState(t)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("left in the kernel after the sessions ended: %v", left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// holdPASV logs in from role to host, sends PASV and keeps the session
// open; it returns the announced port as the client got it.
func holdPASV(t *testing.T, role, host string, secs int) (port int, wait func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs+10)*time.Second)
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", natNS(role), "python3", "ftpclient.py", "hold", host, "PASV", strconv.Itoa(secs))
	out := startPiped(t, cmd)
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		cancel()
		t.Fatalf("PASV through the gateway: no reply (%v)", err)
	}
	var h [6]int
	if i := strings.IndexByte(line, '('); i < 0 || func() bool {
		_, err := fmt.Sscanf(line[i:], "(%d,%d,%d,%d,%d,%d)", &h[0], &h[1], &h[2], &h[3], &h[4], &h[5])
		return err != nil
	}() {
		cancel()
		t.Fatalf("PASV reply %q", line)
	}
	if got := fmt.Sprintf("%d.%d.%d.%d", h[0], h[1], h[2], h[3]); got != public4 {
		t.Errorf("227 reached the client with %s, want the public address %s: %q", got, public4, line)
	}
	return h[4]<<8 | h[5], func() { cancel(); cmd.Wait() }
}

// probe tries a TCP connection from a NAT lab host and reports whether
// it was accepted.
func probe(t *testing.T, role, from, addr string, port int) bool {
	t.Helper()
	script := fmt.Sprintf(`import socket,sys
s=socket.socket()
if %q: s.bind((%q,0))
s.settimeout(1)
try:
    s.connect((%q,%d)); print("open")
except OSError as e:
    print("closed", e)`, from, from, addr, port)
	out, _ := exec.Command("ip", "netns", "exec", natNS(role), "python3", "-c", script).CombinedOutput()
	return strings.HasPrefix(string(out), "open")
}

// TestNATProbesStayClosed: while a session holds an announced public
// port, another internet host cannot use it, and ports nobody announced
// stay closed, in ftpgate's range and in the server's passive range; the
// client itself can.
func TestNATProbesStayClosed(t *testing.T) {
	needNATLab(t)
	setNATRuleset(t, "ftpgate")
	startFtpgateIn(t, natNS("gw"), "--control-ports", "21,2121,2122")
	// A second internet host, the attacker.
	if out, err := exec.Command("ip", "-n", natNS("inet"), "addr", "replace", "203.0.113.66/24", "dev", natLab+"-i0").CombinedOutput(); err != nil {
		t.Fatalf("adding the attacker's address: %v %s", err, out)
	}
	defer exec.Command("ip", "-n", natNS("inet"), "addr", "del", "203.0.113.66/24", "dev", natLab+"-i0").Run()

	port, wait := holdPASV(t, "inet", public4, 20)
	defer wait()
	if port < 61000 {
		t.Errorf("announced port %d is not from ftpgate's range", port)
	}
	if probe(t, "inet", "203.0.113.66", public4, port) {
		t.Errorf("another host connected to the announced public port %d", port)
	}
	for _, p := range []int{port + 1, 61000, 40000, 40500} {
		if p == port {
			continue
		}
		if probe(t, "inet", "203.0.113.10", public4, p) {
			t.Errorf("unannounced public port %d is open", p)
		}
	}
	if !probe(t, "inet", "203.0.113.10", public4, port) {
		t.Errorf("the client could not connect to its announced port %d", port)
	}
	if probe(t, "inet", "203.0.113.10", public4, port) {
		t.Errorf("a second connection to announced port %d got through: the mapping is not single-use", port)
	}
}

// TestNATLongSession: 60 transfers on one control connection each way,
// every announcement rewritten (ports of different lengths, so the
// lines' lengths change), every file intact.
func TestNATLongSession(t *testing.T) {
	needNATLab(t)
	setNATRuleset(t, "ftpgate")
	d := startFtpgateIn(t, natNS("gw"), "--control-ports", "21,2121,2122")
	for _, c := range []struct{ role, host, mode string }{{"lan", inetServer4, "port"}, {"inet", public4, "pasv"}, {"lan", inetServer6, "eprt"}} {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", natNS(c.role), "python3", "ftpclient.py", "load", c.host, c.mode, "file.bin", "60").CombinedOutput()
		cancel()
		if err != nil || strings.TrimSpace(lastLine(string(out))) != "60" {
			t.Errorf("%s %s: %v\n%s", c.role, c.mode, err, out)
		}
	}
	if n := len(d.find("channel open")); n < 180 {
		t.Errorf("%d channels opened for 180 transfers", n)
	}
	waitNATClean(t, 10*time.Second)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestNATKill9LeavesNothing: with a mapping announced and unused, kill
// -9: the table and its maps go with the process, the announced port is
// closed, and the next start works; through the proxy, it replaces the
// routing rule the last one left, and the packet path adds none.
func TestNATKill9LeavesNothing(t *testing.T) {
	for _, path := range []string{"packet", "proxy"} {
		t.Run(path, func(t *testing.T) {
			needNATLab(t)
			setNATRuleset(t, "ftpgate")
			args := []string{"--control-ports", "21,2121,2122", "--nat-path", path}
			d := startFtpgateIn(t, natNS("gw"), args...)
			port, wait := holdPASV(t, "inet", public4, 3)
			if len(natKernelState(t)) == 0 {
				t.Fatal("no mapping in the kernel while the session holds an announced port")
			}
			_ = d.cmd.Process.Signal(syscall.SIGKILL)
			<-d.done
			wait()
			// The owned table goes; in the packet path the session's
			// shifted connection stays queued in the kept table, for the
			// next ftpgate.
			tables := natNft(t, "list", "tables")
			if strings.Contains(tables, "table inet ftpgate\n") {
				t.Fatal("the table survived kill -9")
			}
			// (Whether the held session was shifted depends on the
			// lengths of the addresses and ports in its 227.)
			if path == "packet" && strings.Contains(tables, "ftpgate_nat") {
				kept := natNft(t, "list", "table", "inet", "ftpgate_nat")
				if !strings.Contains(kept, "elements = { 203.0.113.10 . ") || strings.Contains(kept, "ftp_data") || strings.Contains(kept, "detect") {
					t.Errorf("the kept table after kill -9 holds other than the shifted session:\n%s", kept)
				}
			} else if strings.Contains(tables, "ftpgate_nat") {
				t.Errorf("a kept table through the proxy: %s", tables)
			}
			if probe(t, "inet", "203.0.113.10", public4, port) {
				t.Errorf("announced port %d still open after kill -9", port)
			}
			startFtpgateIn(t, natNS("gw"), args...)
			rules, _ := exec.Command("ip", "-n", natNS("gw"), "rule", "show").CombinedOutput()
			want := 1
			if path == "packet" {
				want = 0
			}
			if n := strings.Count(string(rules), "lookup 2121"); n != want {
				t.Errorf("%d routing rules for the control proxy after a restart, want %d:\n%s", n, want, rules)
			}
			if errs := runAll(t, natTransfers()[:2]); len(names(errs, false)) > 0 {
				t.Errorf("after the restart: %v", errs)
			}
		})
	}
}

// TestNATFTPS: a DMZ FTPS server behind the port forward, announcing the
// public address inside TLS: its encrypted session's scoped range is
// mapped to it, for that client only.
func TestNATFTPS(t *testing.T) {
	needNATLab(t)
	x := in("inet", curl("internet curl explicit FTPS to the DMZ", "ftp://"+public4+":2141/file.bin", "--ssl-reqd", "--insecure"))
	setNATRuleset(t, "kernel")
	if err := x.run(t); err == nil {
		t.Error("FTPS through the port forward worked with the kernel helper")
	}
	setNATRuleset(t, "ftpgate")
	d := startFtpgateIn(t, natNS("gw"), "--control-ports", "21,2121,2122,2141", "--ftps-passive-ports", "198.51.100.2=41000-41999")
	if err := x.run(t); err != nil {
		t.Fatalf("FTPS through the port forward: %v", err)
	}
	r := d.waitLog(t, 5*time.Second, "scoped range open", "ports", "41000-41999")
	if fmt.Sprint(r["public"]) != public4 {
		t.Errorf("scoped range not mapped from the public address: %v", r)
	}
	waitNATClean(t, 10*time.Second)
}

// TestNATIPv4OnlyGateway: a gateway with IPv6 disabled (IPv4-only NAT
// boxes often are; the proxy's IPv6 route and ::1 listener cannot be had
// there) runs ftpgate, which says NAT of IPv6 is off, and IPv4 NAT works
// both ways, in either path.
func TestNATIPv4OnlyGateway(t *testing.T) {
	for _, path := range []string{"packet", "proxy"} {
		t.Run(path, func(t *testing.T) {
			needNATLab(t)
			setNATRuleset(t, "ftpgate")
			if out, err := natLabCmd("gw-ipv6", "off").CombinedOutput(); err != nil {
				t.Fatalf("natlab.sh gw-ipv6 off: %v\n%s", err, out)
			}
			t.Cleanup(func() {
				if out, err := natLabCmd("gw-ipv6", "on").CombinedOutput(); err != nil {
					t.Errorf("natlab.sh gw-ipv6 on: %v\n%s", err, out)
				}
			})
			d := startFtpgateIn(t, natNS("gw"), "--control-ports", "21,2121,2122", "--nat-path", path)
			if r := d.find("IPv6 is disabled on this host (net.ipv6.conf.lo.disable_ipv6): NAT of IPv6 control connections is off, IPv4 NAT works"); len(r) == 0 {
				t.Errorf("no log line says NAT of IPv6 is off")
			}
			srv4, pub4 := "ftp://"+inetServer4+"/file.bin", "ftp://"+public4+"/file.bin"
			xs := []transfer{
				in("lan", curl("LAN curl PASV v4", srv4, "--ftp-pasv", "--disable-epsv")),
				in("lan", curl("LAN curl PORT v4", srv4, "--ftp-port", "-", "--disable-eprt")),
				in("inet", curl("internet curl PASV v4", pub4, "--ftp-pasv", "--disable-epsv")),
				in("inet", curl("internet curl PORT v4", pub4, "--ftp-port", "-", "--disable-eprt")),
			}
			errs := runAll(t, xs)
			for _, name := range names(errs, false) {
				t.Errorf("%s: %v", name, errs[name])
			}
			if n := len(d.find("session start", "nat_path", path, "translated", "true")); n < len(xs) {
				t.Errorf("%d translated sessions in the %s path for %d transfers", n, path, len(xs))
			}
		})
	}
}

// TestNATRestartKeepsSessions: a session logged in and shifted (its
// announcement rewritten to another length) before ftpgate restarts
// transfers again afterwards, in passive mode (an internet client of the
// DMZ server behind the port forward: its 227 rewritten) and in active
// mode (a LAN client behind masquerade: its PORT rewritten), after a
// stop and start (systemctl restart) and after kill -9 and a start.
func TestNATRestartKeepsSessions(t *testing.T) {
	type restartCase struct {
		name, role, host, mode, shift string
		kill                          bool
	}
	var cases []restartCase
	// Each case with ftpgate shifting, and (where the kernel can:
	// needKernelShift) with the kernel shifting, which keeps its shifts
	// in conntrack across the restart.
	for _, shift := range []string{"ftpgate", "kernel"} {
		for _, c := range []restartCase{
			{"passive restart", "inet", public4, "pasv", shift, false},
			{"active restart", "lan", inetServer4, "port", shift, false},
			{"passive kill -9", "inet", public4, "pasv", shift, true},
			{"active kill -9", "lan", inetServer4, "port", shift, true},
		} {
			if shift == "kernel" {
				c.name = "kernel shifts " + c.name
			}
			cases = append(cases, c)
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			needNATLab(t)
			if c.shift == "kernel" {
				needKernelShift(t)
			}
			setNATRuleset(t, "ftpgate")
			args := []string{"--control-ports", "21,2121,2122", "--nat-shift", c.shift}
			d := startFtpgateIn(t, natNS("gw"), args...)
			gate := filepath.Join(t.TempDir(), "restarted")
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, "ip", "netns", "exec", natNS(c.role), "python3", "ftpclient.py", "again", c.host, c.mode, "file.bin", "@"+gate)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out := bufio.NewReader(startPiped(t, cmd))
			first, err := out.ReadString('\n')
			if err != nil || !strings.HasPrefix(first, "first 262144") {
				t.Fatalf("first transfer: %q %v %s", first, err, stderr.String())
			}
			if r := d.find("channel open"); len(r) == 0 || r[len(r)-1]["nat_p"] == nil {
				t.Fatalf("the first transfer's announcement was not rewritten: %v", r)
			}
			if c.kill {
				_ = d.cmd.Process.Signal(syscall.SIGKILL)
			} else {
				_ = d.cmd.Process.Signal(syscall.SIGTERM)
			}
			<-d.done
			// (Whether the first rewrite shifted the session depends on
			// the lengths in it: a shifted one waits in the kept table,
			// one not shifted is queued again; both must go on.)
			d2 := startFtpgateIn(t, natNS("gw"), args...)
			if len(d2.find("NAT packet path: translated sessions carried over from the last run")) == 0 {
				t.Error("the new ftpgate carried no session over")
			}
			if err := os.WriteFile(gate, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			second, err := out.ReadString('\n')
			if werr := cmd.Wait(); err != nil || werr != nil || !strings.HasPrefix(second, "second 262144") {
				t.Fatalf("after the restart: %q %v %v %s", second, err, werr, stderr.String())
			}
			if r := d2.find("channel open"); len(r) == 0 {
				t.Error("the new ftpgate opened nothing for the second transfer")
			}
			waitNATClean(t, 10*time.Second)
		})
	}
}
