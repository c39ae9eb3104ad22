// Command pmem-memkind-init is the init container of a PMEM pod: it copies
// the preload closure (libpmem-preload.so, libmemkind.so.0 and the libraries
// it needs) from the memkind image into the volume the app containers mount
// read-only, verifying it on the way. It never touches the app image.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/pmem-webhook/pmem-webhook/memkindinit"
)

func main() {
	source := flag.String("source", "/usr/lib/pmem-memkind", "staged closure in this image (with a MANIFEST)")
	dest := flag.String("dest", "/opt/pmem-memkind", "shared volume to install into")
	flag.Parse()
	if flag.NArg() != 0 {
		fmt.Fprintf(os.Stderr, "pmem-memkind-init: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	res, err := memkindinit.Install(memkindinit.InstallOptions{Source: *source, Dest: *dest})
	if err != nil {
		fmt.Fprintf(os.Stderr, "pmem-memkind-init: %v\n", err)
		os.Exit(1)
	}
	if res.Unchanged {
		fmt.Printf("pmem-memkind-init: %s already holds the verified closure (%d files)\n", *dest, len(res.Files))
		return
	}
	fmt.Printf("pmem-memkind-init: installed and verified %d files in %s: %s\n", len(res.Files), *dest, strings.Join(res.Files, " "))
	if len(res.Removed) > 0 {
		fmt.Printf("pmem-memkind-init: removed files of an earlier closure: %s\n", strings.Join(res.Removed, " "))
	}
}
