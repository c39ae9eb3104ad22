package patch

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
)

// The annotation API. Every key lives on the pod's own metadata (for a
// workload: spec.template.metadata).
const (
	Prefix = "pmem.alibabacloud.com/"

	AnnotationDirect       = Prefix + "direct"
	AnnotationSize         = Prefix + "size"
	AnnotationStorageClass = Prefix + "storage-class"
	AnnotationContainers   = Prefix + "containers"
	AnnotationMode         = Prefix + "mode"
	AnnotationDRAMRatio    = Prefix + "dram-ratio"
	AnnotationClaim        = Prefix + "claim"
	AnnotationProcesses    = Prefix + "processes"
	// AnnotationStatus is written by the injector, never by users. It is
	// not trusted alone (it travels with copied manifests): a second pass
	// (reinvocation, offline + online injection) is a no-op only when the
	// injected pieces are there and match the current annotations.
	AnnotationStatus = Prefix + "status"

	StatusInjected = "injected"

	// LabelInjection on a namespace set to "disabled" opts the namespace
	// out; it is enforced by the webhook configuration's namespaceSelector.
	LabelInjection = Prefix + "injection"
)

// Mode is how PMEM is presented to the process.
type Mode string

const (
	// ModeFSDAX maps the heap from files on a DAX filesystem (a PVC).
	ModeFSDAX Mode = "fsdax"
	// ModeKMEM uses PMEM onlined as a CPU-less NUMA node: anonymous
	// memory, so fork keeps copy-on-write semantics.
	ModeKMEM Mode = "kmem"
)

// Bounds on sizes: below the minimum memkind's PMEM kind cannot carve
// arenas after the filesystem headroom is taken; above the maximum the
// value is a typo (the largest PMEM fit per node is a few TiB).
var (
	minSize = resource.MustParse("256Mi")
	maxSize = resource.MustParse("64Ti")
)

const maxRatioPart = 1000

// Ratio is the DRAM:PMEM split of the heap under memkind's STATIC_RATIO
// policy.
type Ratio struct {
	DRAM, PMEM int
}

func (r Ratio) String() string { return fmt.Sprintf("%d:%d", r.DRAM, r.PMEM) }

// Options are the typed, validated annotations of one pod.
type Options struct {
	Mode         Mode
	Size         *resource.Quantity // nil: derive from memory limits
	StorageClass string             // "" : config default
	Containers   []string           // nil: all app containers
	DRAMRatio    *Ratio             // nil: PMEM only
	Claim        string             // "" : generate a PVC
	Processes    []string           // nil: config default
}

// InvalidAnnotationError names the annotation, the offending value and
// what would have been accepted, so the message alone lets a user fix it.
type InvalidAnnotationError struct {
	Key, Value, Allowed string
}

func (e *InvalidAnnotationError) Error() string {
	return fmt.Sprintf("annotation %s=%q is invalid: %s", e.Key, e.Value, e.Allowed)
}

func invalid(key, value, format string, args ...any) error {
	return &InvalidAnnotationError{Key: key, Value: value, Allowed: fmt.Sprintf(format, args...)}
}

// Requested reports whether the pod opted in. A malformed opt-in value is
// an error rather than a silent skip: a user who wrote "yes" meant it.
// It is false without an error exactly when NeedsAdmission is false.
func Requested(annotations map[string]string) (bool, error) {
	if !NeedsAdmission(annotations) {
		return false, nil
	}
	v := annotations[AnnotationDirect]
	if v == "true" {
		return true, nil
	}
	return false, invalid(AnnotationDirect, v, `must be "true" or "false"`)
}

var (
	ratioPattern   = regexp.MustCompile(`^([0-9]+):([0-9]+)$`)
	sizePattern    = regexp.MustCompile(`^[+-]?[0-9]{1,20}(\.[0-9]{1,20})?([KMGTPE]i|[kMGTPE]|[eE][0-9]{1,2})?$`)
	processPattern = regexp.MustCompile(`^[A-Za-z0-9._+-]+$`)
)

// validateProcessName returns "" for a name the preload can match against
// the kernel's comm (at most 15 bytes) or the reason it cannot.
func validateProcessName(p string) string {
	switch {
	case p == "":
		return "must not be empty"
	case !processPattern.MatchString(p):
		return "must be a program name of letters, digits, '.', '_', '+' or '-' (no path)"
	case len(p) > 15:
		return "must be at most 15 characters (the kernel truncates process names to 15)"
	}
	return ""
}

// ParseOptions validates every pmem annotation and returns all problems
// at once, so a user fixes a manifest in one round trip.
func ParseOptions(annotations map[string]string, cfg *Config) (*Options, error) {
	o := &Options{Mode: ModeFSDAX}
	var errs []error

	if v, ok := annotations[AnnotationMode]; ok {
		switch Mode(v) {
		case ModeFSDAX, ModeKMEM:
			o.Mode = Mode(v)
		default:
			errs = append(errs, invalid(AnnotationMode, v, `must be "fsdax" or "kmem"`))
		}
	}

	if v, ok := annotations[AnnotationSize]; ok {
		var (
			q   resource.Quantity
			err error
		)
		// The shape is checked before resource.ParseQuantity: it accepts
		// exponents like 1e999999999, and comparing such a quantity
		// takes seconds to minutes (found by FuzzParseOptions).
		if !sizePattern.MatchString(v) {
			err = fmt.Errorf("not a plain quantity")
		} else {
			q, err = resource.ParseQuantity(v)
		}
		switch {
		case err != nil:
			errs = append(errs, invalid(AnnotationSize, v, "must be a quantity of bytes such as 60Gi or 512Mi"))
		case q.Cmp(minSize) < 0:
			errs = append(errs, invalid(AnnotationSize, v, "must be at least %s", minSize.String()))
		case q.Cmp(maxSize) > 0:
			errs = append(errs, invalid(AnnotationSize, v, "must be at most %s", maxSize.String()))
		case q.MilliValue()%1000 != 0:
			errs = append(errs, invalid(AnnotationSize, v, "must be a whole number of bytes such as 60Gi"))
		default:
			o.Size = &q
		}
	}

	if v, ok := annotations[AnnotationStorageClass]; ok {
		switch {
		case len(validation.IsDNS1123Subdomain(v)) > 0 || !cfg.storageClassAllowed(v):
			errs = append(errs, invalid(AnnotationStorageClass, v,
				"must be one of the storage classes the cluster administrator allows: %s",
				strings.Join(cfg.allowedStorageClassList(), ", ")))
		default:
			o.StorageClass = v
		}
	}

	if v, ok := annotations[AnnotationContainers]; ok {
		names, err := parseList(v, func(s string) string {
			if msgs := validation.IsDNS1123Label(s); len(msgs) > 0 {
				return "container names are DNS labels: " + strings.Join(msgs, "; ")
			}
			return ""
		})
		if err != "" {
			errs = append(errs, invalid(AnnotationContainers, v, "must be a comma-separated list of the pod's container names: %s", err))
		} else {
			o.Containers = names
		}
	}

	if v, ok := annotations[AnnotationDRAMRatio]; ok {
		m := ratioPattern.FindStringSubmatch(v)
		var d, p int
		if m != nil {
			d, _ = strconv.Atoi(m[1])
			p, _ = strconv.Atoi(m[2])
		}
		if m == nil || d < 1 || p < 1 || d > maxRatioPart || p > maxRatioPart {
			errs = append(errs, invalid(AnnotationDRAMRatio, v,
				"must be DRAM:PMEM with whole numbers from 1 to %d, e.g. 1:4", maxRatioPart))
		} else {
			o.DRAMRatio = &Ratio{DRAM: d, PMEM: p}
		}
	}

	if v, ok := annotations[AnnotationClaim]; ok {
		if msgs := validation.IsDNS1123Subdomain(v); len(msgs) > 0 {
			errs = append(errs, invalid(AnnotationClaim, v, "must be the name of an existing PersistentVolumeClaim in the pod's namespace: %s", strings.Join(msgs, "; ")))
		} else {
			o.Claim = v
		}
	}

	if v, ok := annotations[AnnotationProcesses]; ok {
		names, err := parseList(v, validateProcessName)
		if err != "" {
			errs = append(errs, invalid(AnnotationProcesses, v, "must be a comma-separated list of program names: %s", err))
		} else {
			o.Processes = names
		}
	}

	// Combinations that cannot mean anything.
	if _, ok := annotations[AnnotationClaim]; ok {
		if sc, ok := annotations[AnnotationStorageClass]; ok {
			errs = append(errs, invalid(AnnotationStorageClass, sc, "must not be set together with %s: the existing claim already has a storage class", AnnotationClaim))
		}
	}
	if o.Mode == ModeKMEM {
		for _, k := range []string{AnnotationSize, AnnotationStorageClass, AnnotationClaim} {
			if v, ok := annotations[k]; ok {
				errs = append(errs, invalid(k, v, "applies only to mode fsdax; mode kmem uses PMEM onlined as system memory and needs no volume"))
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return o, nil
}

// parseList splits a comma list, trims blanks, and rejects empty and
// duplicate entries.
func parseList(v string, check func(string) string) ([]string, string) {
	var out []string
	seen := map[string]bool{}
	for _, part := range strings.Split(v, ",") {
		s := strings.TrimSpace(part)
		if s == "" {
			return nil, "entries must not be empty"
		}
		if seen[s] {
			return nil, fmt.Sprintf("%q is listed twice", s)
		}
		if msg := check(s); msg != "" {
			return nil, fmt.Sprintf("%q %s", s, msg)
		}
		seen[s] = true
		out = append(out, s)
	}
	return out, ""
}

// userAnnotations are the keys under Prefix that users write, in the
// order the README lists them; AnnotationStatus and AnnotationFromWorkload
// are written by the injector and the workload rule.
var userAnnotations = []string{
	AnnotationDirect, AnnotationSize, AnnotationStorageClass, AnnotationContainers,
	AnnotationMode, AnnotationDRAMRatio, AnnotationClaim, AnnotationProcesses,
}

// maxUnknownWarnings bounds the warnings for unknown keys: a pod with
// hundreds of them gets a summary, not hundreds of lines.
const maxUnknownWarnings = 5

// UnknownAnnotationWarnings warns about every annotation key under Prefix
// that this project does not define (a misspelled `size` is otherwise
// silently ignored and the default used), naming the key, the closest
// known key when one is near, and the known keys. Sorted; each warning
// fits the 256 characters the apiserver passes on.
func UnknownAnnotationWarnings(annotations map[string]string) []string {
	var unknown []string
	for k := range annotations {
		if !strings.HasPrefix(k, Prefix) || slices.Contains(userAnnotations, k) || k == AnnotationStatus || k == AnnotationFromWorkload {
			continue
		}
		unknown = append(unknown, k)
	}
	slices.Sort(unknown)
	var out []string
	for n, k := range unknown {
		if n == maxUnknownWarnings {
			out = append(out, fmt.Sprintf("%d more annotations under %s are unknown and have no effect", len(unknown)-n, Prefix))
			break
		}
		out = append(out, unknownAnnotationWarning(k))
	}
	return out
}

// userAnnotationNames are userAnnotations without Prefix, for messages.
var userAnnotationNames = func() []string {
	names := make([]string, len(userAnnotations))
	for i, k := range userAnnotations {
		names[i] = strings.TrimPrefix(k, Prefix)
	}
	return names
}()

func unknownAnnotationWarning(key string) string {
	name, known := strings.TrimPrefix(key, Prefix), userAnnotationNames
	if key == LabelInjection {
		return fmt.Sprintf("annotation %s has no effect: it is a namespace label (%s: disabled on the namespace)", key, key)
	}
	hint := ""
	if s := closest(name, known); s != "" {
		hint = fmt.Sprintf(" (did you mean %s%s?)", Prefix, s)
	}
	return fmt.Sprintf("annotation %s%s is unknown and has no effect%s; the %s keys are: %s",
		Prefix, Abbreviate(name, 63), hint, Prefix, strings.Join(known, ", "))
}

// closest returns the known name nearest to name (case-insensitive edit
// distance of at most 2, or at most a third of the name), or "".
func closest(name string, known []string) string {
	best, bestD := "", -1
	lower := strings.ToLower(name)
	for _, k := range known {
		d := editDistance(lower, k)
		if d <= max(2, len(k)/3) && (bestD < 0 || d < bestD) {
			best, bestD = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of two short strings (bytes).
func editDistance(a, b string) int {
	if len(a) > 100 {
		return len(a) // far from every known key; bounds the work
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
