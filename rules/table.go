package rules

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"syscall"

	"github.com/google/nftables"
)

// DefaultTable is the name of ftpgate's table, as an admin sees it in
// `nft list table inet ftpgate`.
const DefaultTable = "ftpgate"

// replaceLeftoverTable deletes a table of that name that nobody owns,
// or fails with ErrTableBusy if another process owns it.
//
//	nft delete table inet NAME
func replaceLeftoverTable(conn *nftables.Conn, name string, log *slog.Logger) error {
	_, err := conn.ListTableOfFamily(name, nftables.TableFamilyINet)
	if err != nil {
		if isPermission(err) {
			return fmt.Errorf("%w: listing tables: %v (run as root or with CAP_NET_ADMIN)", ErrNoNftables, err)
		}
		return nil
	}
	// A table of that name is there. If another process owns it the
	// kernel refuses the deletion; a table nobody owns is a leftover
	// (e.g. created by hand) and is replaced.
	conn.DelTable(&nftables.Table{Name: name, Family: nftables.TableFamilyINet})
	if err := conn.Flush(); err != nil {
		if isPermission(err) {
			return fmt.Errorf("table inet %s: %w (is another ftpgate running?)", name, ErrTableBusy)
		}
		return fmt.Errorf("%w: removing stale table inet %s: %v", ErrNoNftables, name, err)
	}
	log.Warn("replaced a leftover table nobody owned", "table", "inet "+name)
	return nil
}

// addOwnedTable creates the table with the owner flag, which gives it to
// conn's socket: only that socket may change the table, and the kernel
// deletes the table when the socket closes, even after kill -9.
//
//	nft add table inet NAME { flags owner; }
func addOwnedTable(conn *nftables.Conn, name string) (*nftables.Table, error) {
	t := conn.AddTable(&nftables.Table{Name: name, Family: nftables.TableFamilyINet, Flags: nftables.TableFlagOwner})
	if err := conn.Flush(); err != nil {
		if isPermission(err) {
			return nil, fmt.Errorf("%w: creating table inet %s: %v (run as root or with CAP_NET_ADMIN)", ErrNoNftables, name, err)
		}
		return nil, fmt.Errorf("%w: creating table inet %s with the owner flag (Linux 5.12 or later): %v", ErrNoNftables, name, err)
	}
	return t, nil
}

func isPermission(err error) bool {
	return errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.EPERM)
}
