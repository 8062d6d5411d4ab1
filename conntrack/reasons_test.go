package conntrack

import "testing"

// TestKindNames: every kind has a name of its own, which metrics use as a
// label.
func TestKindNames(t *testing.T) {
	seen := map[string]bool{}
	for k := range closeKinds {
		n := k.String()
		if n == "" || seen["close "+n] {
			t.Errorf("close kind %d: name %q empty or repeated", k, n)
		}
		seen["close "+n] = true
	}
	for k := range refusalKinds {
		n := k.String()
		if n == "" || seen["refusal "+n] {
			t.Errorf("refusal kind %d: name %q empty or repeated", k, n)
		}
		seen["refusal "+n] = true
	}
}
