package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/ftpgate/ftpgate/capture"
	"github.com/ftpgate/ftpgate/conntrack"
)

// DefaultStatusSocket is where `ftpgate run` answers `ftpgate status`.
const DefaultStatusSocket = "/run/ftpgate/status.sock"

// statusServer answers status requests on a unix socket only root (the
// socket's owner) may open. The tracker belongs to the loop's goroutine,
// so each request is a call run there.
type statusServer struct {
	ln   net.Listener
	path string
}

// startStatus will not take the socket of another ftpgate that answers
// on path; a socket file no one answers on was left by a killed one, and
// is replaced.
func startStatus(path string, calls *capture.Calls, status func() any, log *slog.Logger) (*statusServer, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("status socket %s: another ftpgate answers on it", path)
	}
	_ = os.Remove(path) // left by a killed ftpgate
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("status socket: %w", err)
	}
	s := &statusServer{ln: ln, path: path}
	go s.serve(calls, status, log)
	return s, nil
}

// serve answers each connection until the listener closes.
func (s *statusServer) serve(calls *capture.Calls, status func() any, log *slog.Logger) {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		go answerStatus(c, calls, status, log)
	}
}

// answerStatus writes one status to c and closes it. A loop too busy to
// run the call within 5 s gets the client no answer rather than a
// goroutine that waits for ever.
func answerStatus(c net.Conn, calls *capture.Calls, status func() any, log *slog.Logger) {
	defer c.Close()
	done := make(chan []byte, 1)
	calls.Do(func() {
		b, err := json.Marshal(status())
		if err != nil {
			log.Error("status", "error", err)
		}
		done <- b
	})
	select {
	case b := <-done:
		_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.Write(append(b, '\n'))
	case <-time.After(5 * time.Second):
	}
}

func (s *statusServer) Close() error {
	err := s.ln.Close()
	_ = os.Remove(s.path)
	return err
}

// daemonStatus is what the daemon reports: the tracker's state and the
// daemon's own facts.
type daemonStatus struct {
	Version string `json:"version"`
	conntrack.Status
}
