package capture_test

import (
	"net"
	"os/exec"
	"testing"

	"github.com/ftpgate/ftpgate/capture"
	"github.com/ftpgate/ftpgate/internal/netnstest"
)

// TestConfigureWhileRecordsArrive configures an NFLOG group whose socket
// already holds records, as ftpgate's does when its rules copy traffic
// before it has set the group up: the answer is told from the records,
// and the records are all read afterwards, none lost.
func TestConfigureWhileRecordsArrive(t *testing.T) {
	ns := netnstest.New(t)
	const group = 78
	l, err := capture.OpenLog(group, int(ns), classify)
	if err != nil {
		t.Fatalf("OpenLog: %v", err)
	}
	defer l.Close()
	netnstest.Nft(t, ns, "add", "table", "inet", "t")
	netnstest.Nft(t, ns, "add", "chain", "inet", "t", "out", "{ type filter hook output priority 0; }")
	netnstest.Nft(t, ns, "add", "rule", "inet", "t", "out", "udp", "dport", "9", "log", "group", "78")
	const sent = 50
	netnstest.In(t, ns, func() {
		if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
			t.Fatalf("ip link set lo up: %v %s", err, out)
		}
		// Unconnected: the port unreachable errors do not stop the sends.
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		to := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}
		for range sent {
			if _, err := c.WriteTo([]byte("x"), to); err != nil {
				t.Fatal(err)
			}
		}
	})
	if err := l.SetBatch(64, 32<<10, 0); err != nil {
		t.Fatalf("SetBatch with %d records waiting: %v", sent, err)
	}
	got := 0
	if err := l.Read(func(p *capture.Packet) {
		if p.Kind == capture.Copy {
			got++
		}
	}); err != nil {
		t.Fatalf("Read: %v", err)
	}
	if got != sent {
		t.Errorf("read %d records after configuring, want the %d logged before", got, sent)
	}
}
