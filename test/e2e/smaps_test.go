package e2e

import (
	"os"
	"testing"
)

func TestParseSmaps(t *testing.T) {
	smaps, err := os.ReadFile("testdata/redis-fsdax.smaps")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		prefix   string
		wantKiB  int64
		wantMaps int
	}{
		{"/mnt/pmem/", 102400 + 1024, 2},
		{"/opt/pmem-memkind/", 64, 1},
		{"/nowhere/", 0, 0},
	} {
		got, maps, err := parseSmaps(string(smaps), tt.prefix)
		if err != nil {
			t.Fatalf("%s: %v", tt.prefix, err)
		}
		if got != tt.wantKiB || len(maps) != tt.wantMaps {
			t.Errorf("%s: %d KiB in %d mappings %q, want %d KiB in %d", tt.prefix, got, len(maps), maps, tt.wantKiB, tt.wantMaps)
		}
	}
	if _, _, err := parseSmaps("7f-8f rw-s 0 fd:00 1 /mnt/pmem/x\nRss: lots kB\n", "/mnt/pmem/"); err == nil {
		t.Error("a malformed Rss line parsed without error")
	}
}
