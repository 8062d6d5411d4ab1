package conntrack

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

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

// RunInline runs the tracker on an inline queue: packets are handled in
// the queue's reader goroutine and released once their pinholes are
// committed; expiry and usage reports take turns with it under a lock.
func (t *Tracker) RunInline(ctx context.Context, q *QueueSource, consumed <-chan rules.Pinhole) error {
	var mu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		ticker := time.NewTicker(time.Second)
		defer ticker.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case p := <-consumed:
				mu.Lock()
				t.PinholeConsumed(p)
				mu.Unlock()
			case now := <-ticker.C:
				mu.Lock()
				t.Expire(now)
				if err := t.Commit(); err != nil {
					t.log.Error("committing expired pinholes", "error", err)
				}
				mu.Unlock()
			}
		}
	}()
	err := q.Serve(ctx, func(pkts []Packet) error {
		mu.Lock()
		defer mu.Unlock()
		t.drainConsumed(consumed)
		for _, p := range pkts {
			t.HandlePacket(p.Data, p.Link, p.CI)
		}
		return t.Commit()
	})
	<-done
	mu.Lock()
	defer mu.Unlock()
	t.CloseAll("daemon stopping")
	if cerr := t.Commit(); err == nil {
		err = cerr
	}
	return err
}
