// Command build-images builds the kubelet e2e provider's image archives (webhook, memkind init,
// Debian Redis, pause) from deploy/images without Docker and prints their paths; with
// --import it also loads them into a containerd (`ctr -n k8s.io images import`).
//
//	go run ./test/images/cmd/build-images --out bin/node-e2e/archives
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"

	"github.com/pmem-webhook/pmem-webhook/test/cluster"
	"github.com/pmem-webhook/pmem-webhook/test/images"
)

func main() {
	out := flag.String("out", "", "directory for the archives (default <repo>/bin/node-e2e/archives)")
	cache := flag.String("cache", "", "cache directory (default <repo>/bin/node-e2e/cache)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	root, err := cluster.RepoRoot()
	if err != nil {
		log.Fatal(err)
	}
	if *out == "" {
		*out = filepath.Join(root, "bin", "node-e2e", "archives")
	}
	if *cache == "" {
		*cache = filepath.Join(root, "bin", "node-e2e", "cache")
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		log.Fatal(err)
	}
	built, err := images.BuildSet(ctx, images.SetOptions{RepoRoot: root, CacheDir: *cache, WorkDir: *out, Logf: log.Printf})
	if err != nil {
		log.Fatal(err)
	}
	for _, b := range built {
		fmt.Printf("%s\t%s\n", b.Ref, b.Archive)
	}
}
