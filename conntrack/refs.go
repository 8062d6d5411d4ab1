package conntrack

import "fmt"

// refSet is a kernel set whose elements several sessions share: an
// element is queued for adding with its first holder and for deleting
// with its last. A backend that fails is counted and logged here, once
// for all its users.
type refSet[K interface {
	comparable
	fmt.Stringer
}] struct {
	what     string // for the log: "control session peers"
	refs     map[K]int
	add, del func(K) error
	env      *env
	changed  func() // marks the tracker's queue as holding work
}

func newRefSet[K interface {
	comparable
	fmt.Stringer
}](what string, env *env, changed func(), add, del func(K) error) *refSet[K] {
	return &refSet[K]{what: what, refs: make(map[K]int), add: add, del: del, env: env, changed: changed}
}

// hold takes a reference to k, adding it to the kernel with the first.
func (r *refSet[K]) hold(k K) {
	if r.refs[k]++; r.refs[k] > 1 {
		return
	}
	r.changed()
	if err := r.add(k); err != nil {
		r.env.stats.BackendErrors++
		r.env.log.Error("adding "+r.what, "element", k.String(), "error", err)
	}
}

// release drops a reference to k, deleting it from the kernel with the
// last.
func (r *refSet[K]) release(k K) {
	n, ok := r.refs[k]
	if !ok {
		return
	}
	if n > 1 {
		r.refs[k] = n - 1
		return
	}
	delete(r.refs, k)
	r.changed()
	if err := r.del(k); err != nil {
		r.env.stats.BackendErrors++
		r.env.log.Error("removing "+r.what, "element", k.String(), "error", err)
	}
}

func (r *refSet[K]) len() int { return len(r.refs) }
