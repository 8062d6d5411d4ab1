package conntrack

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
	"unsafe"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"golang.org/x/sys/unix"

	"github.com/ftpgate/ftpgate/rules"
)

// Packet is one captured packet.
type Packet struct {
	Data []byte
	Link layers.LinkType
	CI   gopacket.CaptureInfo
}

// Source delivers packets until it returns an error; io.EOF ends a file.
type Source interface {
	ReadPacket() (Packet, error)
	Close() error
}

// FileSource reads a pcap or pcapng file.
type FileSource struct {
	f    *os.File
	pcap *pcapgo.Reader
	ng   *pcapgo.NgReader
}

// OpenFile opens a capture file, telling pcap from pcapng by its magic.
func OpenFile(path string) (*FileSource, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening capture: %w", err)
	}
	br := bufio.NewReaderSize(f, 1<<16)
	magic, err := br.Peek(4)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("reading capture %s: %w", path, err)
	}
	s := &FileSource{f: f}
	if string(magic) == "\x0a\x0d\x0d\x0a" {
		s.ng, err = pcapgo.NewNgReader(br, pcapgo.DefaultNgReaderOptions)
	} else {
		s.pcap, err = pcapgo.NewReader(br)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("capture %s is neither pcap nor pcapng: %w", path, err)
	}
	return s, nil
}

// ReadPacket returns the next packet or io.EOF.
func (s *FileSource) ReadPacket() (Packet, error) {
	if s.ng != nil {
		data, ci, err := s.ng.ReadPacketData()
		if err != nil {
			return Packet{}, eof(err)
		}
		link := layers.LinkTypeEthernet
		if iface, err := s.ng.Interface(ci.InterfaceIndex); err == nil {
			link = iface.LinkType
		}
		return Packet{Data: data, Link: link, CI: ci}, nil
	}
	data, ci, err := s.pcap.ReadPacketData()
	if err != nil {
		return Packet{}, eof(err)
	}
	return Packet{Data: data, Link: s.pcap.LinkType(), CI: ci}, nil
}

// eof treats a truncated last record like the end of the file: captures
// cut short by a full disk or a killed tcpdump are common.
func eof(err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return io.EOF
	}
	return err
}

func (s *FileSource) Close() error { return s.f.Close() }

// Replay feeds every packet of src to the tracker, expiring by packet
// time, and ends every session at the end. It is how `ftpgate analyze`
// runs captures through the same pipeline as the daemon.
func (t *Tracker) Replay(src Source) error {
	var lastExpire time.Time
	for {
		p, err := src.ReadPacket()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading packet %d: %w", t.stats.Packets+1, err)
		}
		t.HandlePacket(p.Data, p.Link, p.CI)
		if ts := p.CI.Timestamp; ts.Sub(lastExpire) >= time.Second {
			if !lastExpire.IsZero() {
				t.Expire(ts)
			}
			lastExpire = ts
		}
		if err := t.Commit(); err != nil {
			return err
		}
	}
	t.CloseAll("end of capture")
	return t.Commit()
}

// Run reads packets from the channel until ctx ends or the channel is
// closed. It handles every packet already queued, then commits the
// pinhole changes of that batch at once. On the way out it closes every
// pinhole.
//
// consumed, which may be nil, reports pinholes the kernel used up.
func (t *Tracker) Run(ctx context.Context, pkts <-chan Packet, consumed <-chan rules.Pinhole) error {
	ticker := time.NewTicker(time.Second)
	defer ticker.Stop()
	finish := func(reason string) error {
		t.CloseAll(reason)
		return t.Commit()
	}
	for {
		select {
		case <-ctx.Done():
			return finish("daemon stopping")
		case p := <-consumed:
			t.PinholeConsumed(p)
		case now := <-ticker.C:
			t.Expire(now)
			if err := t.Commit(); err != nil {
				t.log.Error("committing expired pinholes", "error", err)
			}
		case p, ok := <-pkts:
			if !ok {
				return finish("capture ended")
			}
			// Reports of used pinholes go first: the kernel wrote them
			// before any control packet that follows the data connection.
			t.drainConsumed(consumed)
			t.HandlePacket(p.Data, p.Link, p.CI)
		drain:
			for range 255 {
				select {
				case p, ok := <-pkts:
					if !ok {
						break drain
					}
					t.HandlePacket(p.Data, p.Link, p.CI)
				default:
					break drain
				}
			}
			if err := t.Commit(); err != nil {
				t.log.Error("committing pinholes", "error", err)
			}
		}
	}
}

func (t *Tracker) drainConsumed(consumed <-chan rules.Pinhole) {
	for {
		select {
		case p := <-consumed:
			t.PinholeConsumed(p)
		default:
			return
		}
	}
}

// RunInline runs the tracker on inline capture (rules.AddInlineRules):
// the copies of control segments from the NFLOG group lr, and the packets
// the kernel holds on queue q, in one loop. For every batch of held
// packets it first reads every copy already logged, which includes every
// announcement that came before them.
//
// Pinhole changes are committed at most CommitDelay after they were
// queued, not at once: a client usually connects within that time, its
// SYN is held and admitted from the pinhole table here, and the add is
// cancelled before the kernel ever saw it. Only pinholes not used that
// fast cost a commit (and then meet their SYN in the kernel). The peers
// of a new control session are committed before its SYN goes on.
func (t *Tracker) RunInline(ctx context.Context, q *QueueSource, lr *rules.LogReader) error {
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("creating eventfd: %w", err)
	}
	defer unix.Close(wake)
	stop := context.AfterFunc(ctx, func() {
		_, _ = unix.Write(wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	})
	defer stop()
	fds := []unix.PollFd{{Fd: int32(q.Fd()), Events: unix.POLLIN}, {Fd: int32(lr.Fd()), Events: unix.POLLIN}, {Fd: int32(wake), Events: unix.POLLIN}}
	var held Held
	var dirtySince time.Time
	nextExpire := time.Now().Add(time.Second)
	commit := func(what string) {
		dirtySince = time.Time{}
		if err := t.Commit(); err != nil {
			t.log.Error(what, "error", err)
		}
	}
	var runErr error
	for ctx.Err() == nil {
		deadline := nextExpire
		if !dirtySince.IsZero() && dirtySince.Add(t.cfg.CommitDelay).Before(deadline) {
			deadline = dirtySince.Add(t.cfg.CommitDelay)
		}
		timeout := int(time.Until(deadline) / time.Millisecond)
		if timeout < 0 {
			timeout = 0
		}
		if err := poll(fds, timeout); err != nil && !errors.Is(err, unix.EINTR) {
			runErr = fmt.Errorf("waiting for control traffic: %w", err)
			break
		}
		if ctx.Err() != nil {
			break
		}
		// Held packets first, then the copies: everything logged before a
		// held packet was queued is in the NFLOG socket by now.
		if err := q.ReadHeld(&held); err != nil {
			runErr = err
			break
		}
		now := time.Now()
		if _, err := lr.Drain(func(r rules.LogRecord) { t.HandleLog(r, now) }); err != nil {
			runErr = err
			break
		}
		if lr.Lost != t.stats.CopiesLost {
			t.stats.CopiesLost = lr.Lost
			t.warnCap(2, "copies of control traffic lost (NFLOG socket overflowed); sessions that lost bytes refuse active mode from then on",
				"overflows_so_far", lr.Lost)
		}
		control := false
		for i, p := range held.Packets {
			if t.IsControl(p.Data) {
				t.HandlePacket(p.Data, p.Link, p.CI)
				control = true
			} else {
				held.Verdicts[i] = t.AdmitHeldSYN(p.Data)
			}
		}
		if control {
			// Only the peers: pinholes keep their commit delay.
			if err := t.CommitPeers(); err != nil {
				t.log.Error("committing control session peers", "error", err)
			}
		}
		// Release whatever the commit said: a failed commit must not cut
		// the control connection.
		if err := q.Release(&held); err != nil {
			t.log.Error("releasing held packets", "error", err)
		}
		if t.dirty && dirtySince.IsZero() {
			dirtySince = now
		}
		if !now.Before(nextExpire) {
			t.Expire(now)
			nextExpire = now.Add(time.Second)
			if t.dirty && dirtySince.IsZero() {
				dirtySince = now
			}
		}
		if !dirtySince.IsZero() && now.Sub(dirtySince) >= t.cfg.CommitDelay {
			commit("committing pinholes")
		} else if !t.dirty {
			dirtySince = time.Time{}
		}
	}
	t.CloseAll("daemon stopping")
	if cerr := t.Commit(); runErr == nil {
		runErr = cerr
	}
	return runErr
}

// ReportUsed sends the pinholes the NFLOG group reports used to out until
// ctx ends or the reader fails: what passive capture needs of the group.
func ReportUsed(ctx context.Context, lr *rules.LogReader, out chan<- rules.Pinhole) error {
	for {
		if err := lr.Wait(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		var used []rules.Pinhole
		if _, err := lr.Drain(func(r rules.LogRecord) {
			if string(r.Prefix) == rules.LogPrefixUsed {
				if p, ok := rules.PinholeOfPacket(r.Payload); ok {
					used = append(used, p)
				}
			}
		}); err != nil {
			return err
		}
		for _, p := range used {
			select {
			case out <- p:
			case <-ctx.Done():
				return nil
			}
		}
	}
}

// poll waits for the loop's descriptors. Under load it is poll(2) as a
// raw system call: the loop runs on one Go processor (GOMAXPROCS 1), and
// blocking through the scheduler's syscall entry lets its monitor thread
// take the processor away after 20 µs and hand it back on wakeup, which
// at thousands of wakeups a second cost more CPU than ftpgate's own work
// (perf: the monitor's nanosleeps and a second thread's wakeups). Held
// raw, the processor stays with the loop. The runtime still preempts a
// goroutine that holds it for 10 ms, with a signal that ends the poll
// (EINTR), so a raw wait is kept shorter than that; only an idle daemon
// then waits through the scheduler, once per quiet spell.
func poll(fds []unix.PollFd, timeoutMs int) error {
	const rawMs = 5
	n, err := pollRaw(fds, min(timeoutMs, rawMs))
	if n != 0 || err != nil || timeoutMs <= rawMs {
		return err
	}
	_, err = unix.Poll(fds, timeoutMs-rawMs)
	return err
}

func pollRaw(fds []unix.PollFd, timeoutMs int) (int, error) {
	ts := unix.NsecToTimespec(int64(timeoutMs) * int64(time.Millisecond))
	n, _, errno := unix.RawSyscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&fds[0])), uintptr(len(fds)),
		uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}
