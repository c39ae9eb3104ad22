package main

import (
	"bytes"
	"context"
	"regexp"
	"testing"
	"time"

	"github.com/pmem-webhook/pmem-webhook/test/cluster"
)

// TestDemo runs `make demo`'s program end to end and checks that its output
// shows what the README promises: the injected pod and the generated PVC
// with its name and storage class.
func TestDemo(t *testing.T) {
	cluster.RequireBinaries(t, "test-controlplane")
	var out bytes.Buffer
	if err := run(context.Background(), &out, "deploy/examples/redis-pmem.yaml", "default", false, 2*time.Minute); err != nil {
		t.Fatalf("demo: %v\noutput:\n%s", err, out.String())
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^== Pod default/redis-pmem-\S+ \(created by ReplicaSet redis-pmem-`),
		regexp.MustCompile(`(?m)^  \+   pmem\s+generic ephemeral volume: PVC <pod>-pmem, storage class csi-pmem-direct, 2Gi`),
		regexp.MustCompile(`(?m)^  \+   pmem-memkind-init\s+image pmem-webhook/memkind:dev$`),
		regexp.MustCompile(`(?m)^  \+     env:\s+LD_PRELOAD=/opt/pmem-memkind/libpmem-preload.so$`),
		regexp.MustCompile(`(?m)^== PVC default/redis-pmem-\S+-pmem `),
		regexp.MustCompile(`(?m)^  storage class:\s+csi-pmem-direct$`),
		regexp.MustCompile(`(?m)^  size:\s+2Gi$`),
		regexp.MustCompile(`(?m)^  control plane stopped`),
	} {
		if !want.Match(out.Bytes()) {
			t.Errorf("output lacks %s:\n%s", want, out.String())
		}
	}
}
