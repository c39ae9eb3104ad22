// Command pmem-stage assembles the preload closure that the memkind init
// image ships: it builds libpmem-preload.so with the C compiler (or takes a
// built one) and writes a MANIFEST. The preload is freestanding (no library
// at all), so that is the whole closure. --memkind LIB additionally copies
// LIB and every non-glibc library ldd finds for it, with RUNPATH $ORIGIN
// (patchelf).
//
//	go run ./cmd/pmem-stage --out /usr/lib/pmem-memkind
//
// Needs gcc (unless --preload); patchelf and ldd only with --memkind.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"

	"github.com/pmem-webhook/pmem-webhook/memkindinit"
	"github.com/pmem-webhook/pmem-webhook/preload"
)

func main() {
	out := flag.String("out", "", "closure directory to create (must not exist or be empty)")
	pre := flag.String("preload", "", "a built libpmem-preload.so; empty: build it with --cc")
	cc := flag.String("cc", "gcc", "C compiler for the preload")
	memkind := flag.String("memkind", "", "optional extra library (e.g. libmemkind.so.0) to stage with its closure; empty: none")
	flag.Parse()
	if *out == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: pmem-stage --out DIR [--preload FILE | --cc gcc] [--memkind PATH]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *out, *pre, *cc, *memkind); err != nil {
		fmt.Fprintf(os.Stderr, "pmem-stage: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out, pre, cc, memkind string) error {
	if pre == "" {
		tmp, err := os.MkdirTemp("", "pmem-stage-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		pre = filepath.Join(tmp, preload.FileName)
		if err := preload.Build(ctx, cc, pre); err != nil {
			return err
		}
	}
	m, err := memkindinit.Stage(ctx, memkindinit.StageOptions{Preload: pre, Memkind: memkind, Out: out})
	if err != nil {
		return err
	}
	fmt.Printf("staged %d files into %s:\n%s", len(m), out, m.Marshal())
	return nil
}
