package capture

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// FileSource reads a pcap or pcapng file. It is always ready (Fd is -1)
// and hands over one packet per Read.
type FileSource struct {
	f    *os.File
	pcap *pcapgo.Reader
	ng   *pcapgo.NgReader
	pkt  Packet
	n    int
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
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("capture %s is empty", path)
		}
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

// Fd is -1: a file is ready until it ends.
func (s *FileSource) Fd() int { return -1 }

// Read hands the next packet to fn, or returns io.EOF at the end. A
// truncated last record counts as the end: captures cut short by a full
// disk or a killed tcpdump are common.
func (s *FileSource) Read(fn func(*Packet)) error {
	var err error
	s.pkt = Packet{Kind: Copy}
	if s.ng != nil {
		var data []byte
		data, ci, rerr := s.ng.ReadPacketData()
		err = rerr
		s.pkt.Data, s.pkt.Time, s.pkt.Link = data, ci.Timestamp, layers.LinkTypeEthernet
		if iface, ierr := s.ng.Interface(ci.InterfaceIndex); ierr == nil {
			s.pkt.Link = iface.LinkType
		}
	} else {
		data, ci, rerr := s.pcap.ReadPacketData()
		err = rerr
		s.pkt.Data, s.pkt.Time, s.pkt.Link = data, ci.Timestamp, s.pcap.LinkType()
	}
	switch {
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return io.EOF
	case err != nil:
		return fmt.Errorf("reading packet %d: %w", s.n+1, err)
	}
	s.n++
	fn(&s.pkt)
	return nil
}

// Close closes the file.
func (s *FileSource) Close() error { return s.f.Close() }
