// Package smaps reads /proc/PID/smaps: how much of a process's resident
// memory sits in the mappings of some files (the PMEM heap under the
// volume) and how much is anonymous (DRAM). The node, matrix and e2e tiers
// measure heap placement with it.
package smaps

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Usage is what smaps says about the mappings whose path starts with one of
// the prefixes a caller asked about ("matching").
type Usage struct {
	// RSSKB is the resident size of the matching mappings.
	RSSKB int64
	// AnonInFilesKB is the anonymous part of RSSKB: the copy-on-write copies
	// in private file mappings, which are DRAM.
	AnonInFilesKB int64
	// AnonKB is the anonymous resident size of the whole process.
	AnonKB int64
	// Mappings are the paths of the matching mappings, one per mapping, in
	// the order smaps lists them.
	Mappings []string
}

// FileKB is the resident file pages of the matching mappings: what is
// really on the files (on PMEM, for the heap).
func (u Usage) FileKB() int64 { return u.RSSKB - u.AnonInFilesKB }

// Files are the distinct paths of the matching mappings, sorted.
func (u Usage) Files() []string {
	files := slices.Clone(u.Mappings)
	slices.Sort(files)
	return slices.Compact(files)
}

// Read parses /proc/pid/smaps.
func Read(pid int, prefixes ...string) (Usage, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return Usage{}, err
	}
	return Parse(string(b), prefixes...)
}

// Parse parses the text of a smaps file (read by a caller, e.g. through
// kubectl exec).
func Parse(smaps string, prefixes ...string) (Usage, error) {
	var u Usage
	in := false
	for _, line := range strings.Split(smaps, "\n") {
		fields := strings.Fields(line)
		// A mapping header starts with an address range "start-end";
		// the path, if any, is the sixth field on.
		if len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			in = false
			if len(fields) >= 6 {
				path := strings.Join(fields[5:], " ")
				in = slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(path, p) })
				if in {
					u.Mappings = append(u.Mappings, path)
				}
			}
			continue
		}
		if len(fields) < 2 || fields[0] != "Rss:" && fields[0] != "Anonymous:" {
			continue
		}
		kb, err := strconv.ParseInt(fields[1], 10, 64)
		if err != nil {
			return Usage{}, fmt.Errorf("smaps line %q: %w", line, err)
		}
		switch {
		case fields[0] == "Anonymous:":
			u.AnonKB += kb
			if in {
				u.AnonInFilesKB += kb
			}
		case in:
			u.RSSKB += kb
		}
	}
	return u, nil
}
