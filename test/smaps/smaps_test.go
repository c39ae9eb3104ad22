package smaps

import (
	"os"
	"slices"
	"testing"
)

func TestParse(t *testing.T) {
	smaps, err := os.ReadFile("testdata/redis-fsdax.smaps")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		prefix    string
		wantKiB   int64
		wantMaps  int
		wantFiles []string
	}{
		{"/mnt/pmem/", 102400 + 1024, 2, []string{"/mnt/pmem/memkind.WHHB7K (deleted)"}},
		{"/opt/pmem-memkind/", 64, 1, []string{"/opt/pmem-memkind/libpmem-preload.so"}},
		{"/nowhere/", 0, 0, nil},
	} {
		u, err := Parse(string(smaps), tt.prefix)
		if err != nil {
			t.Fatalf("%s: %v", tt.prefix, err)
		}
		if u.RSSKB != tt.wantKiB || len(u.Mappings) != tt.wantMaps || !slices.Equal(u.Files(), tt.wantFiles) {
			t.Errorf("%s: %d KiB in %d mappings %q (files %q), want %d KiB in %d, files %q", tt.prefix, u.RSSKB, len(u.Mappings), u.Mappings, u.Files(), tt.wantKiB, tt.wantMaps, tt.wantFiles)
		}
	}
	if _, err := Parse("7f-8f rw-s 0 fd:00 1 /mnt/pmem/x\nRss: lots kB\n", "/mnt/pmem/"); err == nil {
		t.Error("a malformed Rss line parsed without error")
	}
}

// Copy-on-write copies in a private file mapping are anonymous: they count
// on the DRAM side, not on the file's.
func TestFileKBLeavesOutAnonymousCopies(t *testing.T) {
	const smaps = `7f00-7f80 rw-p 00000000 fd:00 1 /mnt/pmem/heap/pmem-heap.1
Rss:                1000 kB
Anonymous:           300 kB
7f80-7f90 rw-p 00000000 00:00 0
Rss:                 500 kB
Anonymous:           500 kB
`
	u, err := Parse(smaps, "/mnt/pmem/")
	if err != nil {
		t.Fatal(err)
	}
	if u.FileKB() != 700 || u.AnonKB != 800 || u.RSSKB != 1000 {
		t.Errorf("FileKB %d, AnonKB %d, RSSKB %d; want 700, 800, 1000", u.FileKB(), u.AnonKB, u.RSSKB)
	}
}
