// Package memkindinit stages the preload closure (libpmem-preload.so, which
// needs no other library, optionally further libraries with their non-glibc
// closure, RUNPATH $ORIGIN, plus a MANIFEST) and installs it into a pod's shared volume: the logic
// behind cmd/pmem-stage (image build time) and cmd/pmem-memkind-init (the
// init container).
package memkindinit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// ManifestName is the file in a closure directory that lists every other
// file with its sha256, in sha256sum(1) format ("<hex>  <name>"), so that
// `sha256sum -c MANIFEST` works too.
const ManifestName = "MANIFEST"

// MemkindName is memkind's library, which closures staged for the old malloc
// interposer carried. The page-level preload does not load it; it is kept as
// the name of an optional extra library (pmem-stage --memkind).
const MemkindName = "libmemkind.so.0"

// Manifest maps a file name (no directories) to its lowercase hex sha256.
type Manifest map[string]string

// Names returns the file names in sorted order.
func (m Manifest) Names() []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Marshal renders m in sha256sum format, sorted by name.
func (m Manifest) Marshal() []byte {
	var b bytes.Buffer
	for _, n := range m.Names() {
		fmt.Fprintf(&b, "%s  %s\n", m[n], n)
	}
	return b.Bytes()
}

// ParseManifest parses sha256sum-format text. Every line must name a plain
// file (no path separators) with a 64-digit hex digest.
func ParseManifest(data []byte) (Manifest, error) {
	m := Manifest{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		text := sc.Text()
		if strings.TrimSpace(text) == "" {
			continue
		}
		sum, name, ok := strings.Cut(text, "  ")
		if !ok {
			return nil, fmt.Errorf("%s line %d: %q: want \"<sha256>  <file>\"", ManifestName, line, text)
		}
		if _, err := hex.DecodeString(sum); err != nil || len(sum) != 64 {
			return nil, fmt.Errorf("%s line %d: digest %q: want 64 hex digits", ManifestName, line, sum)
		}
		if name == "" || name == "." || name == ".." || strings.ContainsAny(name, `/\`) || name == ManifestName {
			return nil, fmt.Errorf("%s line %d: file name %q: want a plain file name other than %s", ManifestName, line, name, ManifestName)
		}
		if _, dup := m[name]; dup {
			return nil, fmt.Errorf("%s line %d: file %q listed twice", ManifestName, line, name)
		}
		m[name] = strings.ToLower(sum)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", ManifestName, err)
	}
	if len(m) == 0 {
		return nil, fmt.Errorf("%s lists no files", ManifestName)
	}
	return m, nil
}

// ReadManifest reads and parses dir/MANIFEST.
func ReadManifest(dir string) (Manifest, error) {
	data, err := os.ReadFile(filepath.Join(dir, ManifestName))
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	m, err := ParseManifest(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, ManifestName), err)
	}
	return m, nil
}

// fileSHA256 returns the hex sha256 of a file's content.
func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
