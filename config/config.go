// Package config binds the injection settings (patch.Config) to command
// line flags and an optional YAML file, identically for the webhook server
// and the offline injector, so both inject the same thing.
package config

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"

	"github.com/pmem-webhook/pmem-webhook/patch"
)

// Flags holds the raw flag values until Load resolves them.
type Flags struct {
	changed func(name string) bool // whether the command line set the flag
	file    string

	memkindImage, defaultStorageClass, allowedStorageClasses string
	sizeFactor                                               float64
	libDir, kmemNodeSelector, targetProcesses                string
}

// Register adds the injection flags to fs (the server's Go-style flag set).
func Register(fs *flag.FlagSet) *Flags {
	f := register(fs)
	f.changed = func(name string) bool {
		set := false
		fs.Visit(func(fl *flag.Flag) { set = set || fl.Name == name })
		return set
	}
	return f
}

// RegisterPFlags adds the same flags to a spf13/pflag flag set, whose flags are written
// kubectl's way (--memkind-image; the kubectl plugin).
func RegisterPFlags(fs *pflag.FlagSet) *Flags {
	f := register(fs)
	f.changed = fs.Changed
	return f
}

// flagSet is what register needs: *flag.FlagSet and *pflag.FlagSet both have it.
type flagSet interface {
	StringVar(p *string, name, value, usage string)
	Float64Var(p *float64, name string, value float64, usage string)
}

func register(fs flagSet) *Flags {
	d := patch.DefaultConfig()
	f := &Flags{}
	fs.StringVar(&f.file, "config", "", "YAML file with the injection settings (keys as in patch.Config: memkindImage, defaultStorageClass, ...); flags given explicitly override it")
	fs.StringVar(&f.memkindImage, "memkind-image", d.MemkindImage, "image of the pmem-memkind-init init container")
	fs.StringVar(&f.defaultStorageClass, "default-storage-class", d.DefaultStorageClass, "storage class of the generated PMEM PVC when the pod names none")
	fs.StringVar(&f.allowedStorageClasses, "allowed-storage-classes", strings.Join(d.AllowedStorageClasses, ","), "comma list of storage classes the storage-class annotation may name (the default class is always allowed)")
	fs.Float64Var(&f.sizeFactor, "size-factor", d.SizeFactor, "PMEM size = this factor x the target containers' memory limits, when the size annotation is absent")
	fs.StringVar(&f.libDir, "lib-dir", d.LibDir, "where the preload libraries are mounted in the pod's containers")
	fs.StringVar(&f.kmemNodeSelector, "kmem-node-selector", "", "k=v,... node selector added to pods in mode kmem")
	fs.StringVar(&f.targetProcesses, "target-processes", strings.Join(d.TargetProcesses, ","), "comma list of process names the preload moves to PMEM when the processes annotation is absent")
	return f
}

// Load resolves defaults, then the config file, then explicitly set flags,
// and validates the result.
func (f *Flags) Load() (*patch.Config, error) {
	cfg := patch.DefaultConfig()
	if f.file != "" {
		raw, err := os.ReadFile(f.file)
		if err != nil {
			return nil, fmt.Errorf("read config file: %w", err)
		}
		if err := yaml.UnmarshalStrict(raw, &cfg); err != nil {
			return nil, fmt.Errorf("parse config file %s: %w", f.file, err)
		}
	}
	if f.changed("memkind-image") {
		cfg.MemkindImage = f.memkindImage
	}
	if f.changed("default-storage-class") {
		cfg.DefaultStorageClass = f.defaultStorageClass
	}
	if f.changed("allowed-storage-classes") {
		cfg.AllowedStorageClasses = splitList(f.allowedStorageClasses)
	}
	if f.changed("size-factor") {
		cfg.SizeFactor = f.sizeFactor
	}
	if f.changed("lib-dir") {
		cfg.LibDir = f.libDir
	}
	if f.changed("kmem-node-selector") {
		sel, err := ParseSelector(f.kmemNodeSelector)
		if err != nil {
			return nil, err
		}
		cfg.KMEMNodeSelector = sel
	}
	if f.changed("target-processes") {
		cfg.TargetProcesses = splitList(f.targetProcesses)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// ParseSelector parses "k=v,k2=v2".
func ParseSelector(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, part := range splitList(s) {
		k, v, ok := strings.Cut(part, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("flag --kmem-node-selector: entry %q is not key=value", part)
		}
		out[k] = v
	}
	return out, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// String renders a config for a startup log line.
func String(c *patch.Config) string {
	return fmt.Sprintf("memkindImage=%s defaultStorageClass=%s allowedStorageClasses=%s sizeFactor=%s libDir=%s kmemNodeSelector=%s targetProcesses=%s",
		c.MemkindImage, c.DefaultStorageClass, strings.Join(c.AllowedStorageClasses, ","), strconv.FormatFloat(c.SizeFactor, 'g', -1, 64),
		c.LibDir, patch.FormatSelector(c.KMEMNodeSelector), strings.Join(c.TargetProcesses, ","))
}
