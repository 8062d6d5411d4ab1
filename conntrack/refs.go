package conntrack

import "fmt"

// refSet is a kernel set whose elements several sessions share: an
// element is queued for adding with its first holder and for deleting
// with its last.
type refSet[K interface {
	comparable
	fmt.Stringer
}] struct {
	what     string // for the log: "control session peers"
	refs     map[K]int
	add, del func(K) error
	fw       *firewall
}

func newRefSet[K interface {
	comparable
	fmt.Stringer
}](what string, fw *firewall, add, del func(K) error) *refSet[K] {
	return &refSet[K]{what: what, refs: make(map[K]int), add: add, del: del, fw: fw}
}

// hold takes a reference to k, adding it to the kernel with the first;
// it reports whether this was the first.
func (r *refSet[K]) hold(k K) bool {
	if r.refs[k]++; r.refs[k] > 1 {
		return false
	}
	r.fw.queued()
	// Formatted only for an error: this runs for every session.
	if err := r.add(k); err != nil {
		r.fw.failed(err, "adding "+r.what, "element", k.String())
	}
	return true
}

// release drops a reference to k, deleting it from the kernel with the
// last; it reports whether this was the last.
func (r *refSet[K]) release(k K) bool {
	n, ok := r.refs[k]
	if !ok {
		return false
	}
	if n > 1 {
		r.refs[k] = n - 1
		return false
	}
	delete(r.refs, k)
	r.fw.queued()
	if err := r.del(k); err != nil {
		r.fw.failed(err, "removing "+r.what, "element", k.String())
	}
	return true
}
