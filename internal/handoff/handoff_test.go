package handoff

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestPushAfterCloseWritesNothing: a Push that comes after Close (a
// status call accepted as ftpgate stops) must not write into whatever
// file took the eventfd's number.
func TestPushAfterCloseWritesNothing(t *testing.T) {
	q, err := New[int]()
	if err != nil {
		t.Fatal(err)
	}
	fd := q.Fd()
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	// The next descriptor opened takes the freed number.
	next, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(next)
	if next != fd {
		t.Skipf("the kernel gave descriptor %d, not the freed %d", next, fd)
	}
	q.Push(1)
	var b [8]byte
	if n, err := unix.Read(next, b[:]); err != unix.EAGAIN {
		t.Errorf("Push after Close wrote into descriptor %d: read %d bytes, %v", next, n, err)
	}
	if got := q.Take(); len(got) != 0 {
		t.Errorf("Take after Close = %v", got)
	}
	if err := q.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
