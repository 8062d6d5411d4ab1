package rules

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/google/nftables"
)

// CheckTable says, changing nothing, whether Open could take the table now:
// ErrNoNftables when nf_tables cannot be programmed from here (not root,
// no CAP_NET_ADMIN), ErrTableBusy when a process owns a table of that
// name. The daemon asks before it binds its sockets, which it must do
// before the table exists, so that these failures still read as what
// they are rather than as a socket refused. (A table nobody owns is a
// leftover, which Open replaces.)
func CheckTable(table string, netns int) error {
	if table == "" {
		table = DefaultTable
	}
	var opts []nftables.ConnOption
	if netns != 0 {
		opts = append(opts, nftables.WithNetNSFd(netns))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return fmt.Errorf("%w: opening netlink socket: %v", ErrNoNftables, err)
	}
	defer conn.CloseLasting()
	t, err := conn.ListTableOfFamily(table, nftables.TableFamilyINet)
	switch {
	case errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.EPERM):
		return fmt.Errorf("%w: listing tables: %v (run as root or with CAP_NET_ADMIN)", ErrNoNftables, err)
	case err != nil:
		return nil // no such table
	case t.Flags&nftables.TableFlagOwner != 0:
		return fmt.Errorf("table inet %s: %w (is another ftpgate running?)", table, ErrTableBusy)
	}
	return nil
}
