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
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
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
			}()
		}
	}()
	return s, nil
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
