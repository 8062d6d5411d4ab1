package main

import (
	"fmt"
	"net"
	"os"
	"time"
)

// sdNotify tells the service manager that started ftpgate (systemd, for
// a unit of Type=notify) about its state, such as "READY=1". The
// protocol is one datagram to the unix socket $NOTIFY_SOCKET names: a
// path, or an abstract name written with a leading '@' (which Go's net
// turns into the leading NUL the kernel wants). Without NOTIFY_SOCKET
// no one listens, and there is nothing to do. These few lines are all
// of the protocol ftpgate needs; a library would bring more.
func sdNotify(state string) error {
	name := os.Getenv("NOTIFY_SOCKET")
	if name == "" {
		return nil
	}
	if name[0] != '/' && name[0] != '@' {
		return fmt.Errorf("NOTIFY_SOCKET=%q: want a socket path or an @abstract name", name)
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sending %q to NOTIFY_SOCKET: %w", state, err)
	}
	defer c.Close()
	// It is sent from the loop: a manager that stops reading must not
	// stop ftpgate.
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("sending %q to NOTIFY_SOCKET: %w", state, err)
	}
	return nil
}
