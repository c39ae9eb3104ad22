// Package gate is the one skip-or-require rule of the test tiers. A test
// that cannot run here (a binary not built, a Debian package missing)
// skips, so that `go test ./...` works on any machine; the make target of
// its tier sets the tier's variable, and then the same test fails instead,
// so that CI can never pass by skipping.
package gate

import (
	"os"
	"testing"
)

// The variables the make targets set (mk/*.mk).
const (
	// ControlPlane: make test-controlplane, test-selfsigned,
	// test-reliability, e2e (the control-plane binaries and the e2e
	// providers' tools).
	ControlPlane = "PMEM_E2E_REQUIRE"
	// Node: make test-node (redis-server, gcc, musl-gcc...).
	Node = "PMEM_NODE_REQUIRED"
	// Matrix: make test-matrix (the image variants).
	Matrix = "PMEM_MATRIX_REQUIRED"
)

// Required reports whether the tier's variable is set (to anything).
func Required(tier string) bool { return os.Getenv(tier) != "" }

// Skip skips t with why, or fails it when the tier is required.
func Skip(t testing.TB, tier, why string) {
	t.Helper()
	if Required(tier) {
		t.Fatalf("%s (%s is set: a missing prerequisite fails)", why, tier)
	}
	t.Skip(why)
}
