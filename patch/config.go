package patch

import (
	"fmt"
	"path"
	"slices"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// Config is the cluster administrator's part of the injection: everything a
// pod annotation must never be able to choose (images, paths, privileges,
// which storage classes are acceptable).
type Config struct {
	// MemkindImage is the image of the init container that copies the
	// preload closure into the pod.
	MemkindImage string `json:"memkindImage"`
	// DefaultStorageClass backs the generated PVC when the pod does not
	// name one.
	DefaultStorageClass string `json:"defaultStorageClass"`
	// AllowedStorageClasses bounds the storage-class annotation. The
	// default class is always allowed.
	AllowedStorageClasses []string `json:"allowedStorageClasses"`
	// SizeFactor turns the target containers' memory limits into a PMEM
	// size when the size annotation is absent (30Gi DRAM -> 60Gi PMEM).
	SizeFactor float64 `json:"sizeFactor"`
	// LibDir is where the preload closure is mounted in every container.
	LibDir string `json:"libDir"`
	// KMEMNodeSelector is added to pods in kmem mode so they land on nodes
	// whose PMEM is onlined as a CPU-less NUMA node.
	KMEMNodeSelector map[string]string `json:"kmemNodeSelector"`
	// TargetProcesses are the program names the preload activates PMEM
	// tiering in when the processes annotation is absent.
	TargetProcesses []string `json:"targetProcesses"`
}

// Default values of Config; the server's flags and the offline injector
// start from these.
const (
	DefaultMemkindImage = "pmem-webhook/memkind:dev"
	DefaultStorageClass = "csi-pmem-direct"
	DefaultSizeFactor   = 2.0
	DefaultLibDir       = "/opt/pmem-memkind"
)

// DefaultTargetProcesses are the programs whose heap moves when neither the
// pod nor the admin names others: Redis and its fork Valkey (the preload has
// the same default).
var DefaultTargetProcesses = []string{"redis-server", "valkey-server"}

// DefaultConfig returns the configuration used when nothing is set.
func DefaultConfig() Config {
	return Config{
		MemkindImage:          DefaultMemkindImage,
		DefaultStorageClass:   DefaultStorageClass,
		AllowedStorageClasses: []string{DefaultStorageClass},
		SizeFactor:            DefaultSizeFactor,
		LibDir:                DefaultLibDir,
		KMEMNodeSelector:      map[string]string{},
		TargetProcesses:       slices.Clone(DefaultTargetProcesses),
	}
}

// storageClassAllowed reports whether name may back the PMEM volume.
func (c *Config) storageClassAllowed(name string) bool {
	if name == c.DefaultStorageClass {
		return true
	}
	for _, allowed := range c.AllowedStorageClasses {
		if allowed == name {
			return true
		}
	}
	return false
}

// allowedStorageClassList is the sorted, de-duplicated allowlist, for
// messages.
func (c *Config) allowedStorageClassList() []string {
	set := map[string]bool{c.DefaultStorageClass: true}
	for _, s := range c.AllowedStorageClasses {
		set[s] = true
	}
	out := make([]string, 0, len(set))
	for s := range set {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// Validate rejects a configuration the injector cannot work with, naming
// the setting, the value and what is allowed.
func (c *Config) Validate() error {
	var errs []string
	if strings.TrimSpace(c.MemkindImage) == "" {
		errs = append(errs, "memkindImage: must not be empty")
	}
	if msgs := validation.IsDNS1123Subdomain(c.DefaultStorageClass); len(msgs) > 0 {
		errs = append(errs, fmt.Sprintf("defaultStorageClass %q: %s", c.DefaultStorageClass, strings.Join(msgs, "; ")))
	}
	for _, s := range c.AllowedStorageClasses {
		if msgs := validation.IsDNS1123Subdomain(s); len(msgs) > 0 {
			errs = append(errs, fmt.Sprintf("allowedStorageClasses entry %q: %s", s, strings.Join(msgs, "; ")))
		}
	}
	if !(c.SizeFactor > 0 && c.SizeFactor <= 64) {
		errs = append(errs, fmt.Sprintf("sizeFactor %v: must be greater than 0 and at most 64", c.SizeFactor))
	}
	if !path.IsAbs(c.LibDir) || path.Clean(c.LibDir) != c.LibDir || c.LibDir == "/" || c.LibDir == PMEMMountPath {
		errs = append(errs, fmt.Sprintf("libDir %q: must be a clean absolute path other than / and %s", c.LibDir, PMEMMountPath))
	}
	for k, v := range c.KMEMNodeSelector {
		if msgs := validation.IsQualifiedName(k); len(msgs) > 0 {
			errs = append(errs, fmt.Sprintf("kmemNodeSelector key %q: %s", k, strings.Join(msgs, "; ")))
		}
		if msgs := validation.IsValidLabelValue(v); len(msgs) > 0 {
			errs = append(errs, fmt.Sprintf("kmemNodeSelector value %q for key %q: %s", v, k, strings.Join(msgs, "; ")))
		}
	}
	if len(c.TargetProcesses) == 0 {
		errs = append(errs, "targetProcesses: must name at least one process")
	}
	for _, p := range c.TargetProcesses {
		if err := validateProcessName(p); err != "" {
			errs = append(errs, fmt.Sprintf("targetProcesses entry %q: %s", p, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalid injection config: %s", strings.Join(errs, "; "))
	}
	return nil
}
