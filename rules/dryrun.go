package rules

import "time"

// DryRun is a Backend that programs nothing and remembers what would be
// open, for `ftpgate analyze` and for tests of the layers above.
type DryRun struct {
	Open    map[Pinhole]time.Duration // currently added, with their timeout
	Peers   map[Peers]bool            // control session peers currently added
	Maps    map[Mapping]time.Duration // NAT mappings currently added
	Scoped  map[ScopedRange]bool      // FTPS scoped ranges currently added
	Adds    int                       // AddPinhole calls committed
	Dels    int                       // DelPinhole calls committed
	Commits int
	opQueue
}

// NewDryRun returns an empty DryRun backend.
func NewDryRun() *DryRun {
	return &DryRun{Open: make(map[Pinhole]time.Duration), Peers: make(map[Peers]bool), Maps: make(map[Mapping]time.Duration), Scoped: make(map[ScopedRange]bool)}
}

func (d *DryRun) Commit() error { return d.commit(d.take(false)) }

func (d *DryRun) CommitPeers() error { return d.commit(d.take(true)) }

func (d *DryRun) commit(ops []op) error {
	if len(ops) == 0 {
		return nil
	}
	for _, op := range ops {
		if op.scoped != nil {
			if op.add {
				d.Scoped[*op.scoped] = true
			} else {
				delete(d.Scoped, *op.scoped)
			}
			continue
		}
		if op.m.Peer.IsValid() {
			if op.add {
				d.Maps[op.m] = op.timeout
			} else {
				delete(d.Maps, op.m)
			}
			continue
		}
		if op.peers.Client.IsValid() {
			if op.add {
				d.Peers[op.peers] = true
			} else {
				delete(d.Peers, op.peers)
			}
			continue
		}
		if op.add {
			d.Open[op.p] = op.timeout
			d.Adds++
		} else {
			delete(d.Open, op.p)
			d.Dels++
		}
	}
	d.Commits++
	return nil
}

func (d *DryRun) Close() error {
	clear(d.Open)
	clear(d.Peers)
	return nil
}
