// Package plugin is the online half of the kubectl plugin `kubectl pmem`:
// enable, disable and status for a workload. It only annotates workloads
// (the workload webhook does the rest, as it would for `kubectl annotate`)
// and reads pods and PVCs; it never writes the pod template itself, so the
// cluster's webhook stays the single place where the rule runs.
package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"

	"github.com/pmem-webhook/pmem-webhook/patch"
)

// Subcommands lists what Run accepts as args[0].
var Subcommands = []string{"enable", "disable", "status"}

// kinds maps what users type (kubectl's names and short names) to the
// workload kinds the workload rule knows.
var kinds = map[string]struct {
	gvr  schema.GroupVersionResource
	kind string
}{}

func init() {
	add := func(group, resource, kind string, names ...string) {
		for _, n := range append(names, resource, strings.TrimSuffix(resource, "s"), strings.ToLower(kind)) {
			kinds[n] = struct {
				gvr  schema.GroupVersionResource
				kind string
			}{schema.GroupVersionResource{Group: group, Version: "v1", Resource: resource}, kind}
		}
	}
	add("apps", "deployments", "Deployment", "deploy")
	add("apps", "statefulsets", "StatefulSet", "sts")
	add("apps", "daemonsets", "DaemonSet", "ds")
	add("apps", "replicasets", "ReplicaSet", "rs")
	add("batch", "jobs", "Job")
	add("batch", "cronjobs", "CronJob", "cj")
	add("", "replicationcontrollers", "ReplicationController", "rc")
}

// Usage and about are each subcommand's synopsis and what it does, for its
// --help.
var (
	Usage = map[string]string{
		"enable":  "kubectl pmem enable WORKLOAD [flags]",
		"disable": "kubectl pmem disable WORKLOAD [flags]",
		"status":  "kubectl pmem status [WORKLOAD] [flags]",
	}
	about = map[string]string{
		"enable": "Annotates WORKLOAD (e.g. deployment/redis) with pmem.alibabacloud.com/direct: \"true\" and the\n" +
			"options given; the workload webhook copies them to its pod template, and its controller rolls the pods.",
		"disable": "Removes the PMEM annotations from WORKLOAD; its pods roll back to DRAM.",
		"status":  "Lists annotated pods (of WORKLOAD, or of the namespace) and what each one's preload reports.",
	}
)

type options struct {
	flags  *genericclioptions.ConfigFlags
	output string
	values map[string]*string // annotation key -> flag value (enable)
}

// Run runs `kubectl pmem SUBCOMMAND args...`.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("usage: kubectl pmem {inject|%s} ...", strings.Join(Subcommands, "|"))
	}
	sub := args[0]
	fs := pflag.NewFlagSet("kubectl pmem "+sub, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	o := &options{flags: genericclioptions.NewConfigFlags(true), values: map[string]*string{}}
	o.flags.AddFlags(fs)
	fs.StringVarP(&o.output, "output", "o", "", "output format: json or yaml (default: a table)")
	if sub == "enable" {
		for _, f := range []struct{ name, key, help string }{
			{"size", patch.AnnotationSize, "PMEM capacity, e.g. 8Gi (default: derived from memory limits)"},
			{"mode", patch.AnnotationMode, "fsdax or kmem"},
			{"dram-ratio", patch.AnnotationDRAMRatio, "DRAM:PMEM, e.g. 1:4"},
			{"storage-class", patch.AnnotationStorageClass, "one of the storage classes the administrator allows"},
			{"containers", patch.AnnotationContainers, "comma list of container names (default: all app containers)"},
			{"processes", patch.AnnotationProcesses, "comma list of program names whose heap moves to PMEM"},
			{"claim", patch.AnnotationClaim, "an existing PVC to use instead of generating one"},
		} {
			o.values[f.key] = fs.String(f.name, "", f.help)
		}
	}
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: %s\n\n%s\n\nFlags:\n%s", Usage[sub], about[sub], fs.FlagUsages())
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil // help asked for and printed: not a failure
		}
		return err
	}
	if o.output != "" && o.output != "json" && o.output != "yaml" {
		return fmt.Errorf("--output %q is not supported: use json or yaml", o.output)
	}
	rest := fs.Args()
	switch sub {
	case "enable", "disable":
		if len(rest) != 1 {
			return fmt.Errorf("usage: kubectl pmem %s WORKLOAD (e.g. deployment/redis)", sub)
		}
		return o.annotate(ctx, sub == "enable", fs, rest[0], stdout, stderr)
	case "status":
		if len(rest) > 1 {
			return errors.New("usage: kubectl pmem status [WORKLOAD]")
		}
		var w string
		if len(rest) == 1 {
			w = rest[0]
		}
		return o.status(ctx, w, stdout)
	}
	return fmt.Errorf("unknown subcommand %q: use inject, %s", sub, strings.Join(Subcommands, ", "))
}

func (o *options) namespace() (string, error) {
	ns, _, err := o.flags.ToRawKubeConfigLoader().Namespace()
	return ns, err
}

// restConfig is the client configuration kubectl would use. Where nothing
// names a server (no kubeconfig, one without a current context, a context
// whose cluster is missing), client-go falls back to http://localhost:8080
// and the user sees only "connection refused" on a URL they never typed;
// kubectl explains these cases, and so do we, naming the file.
func (o *options) restConfig() (*rest.Config, error) {
	loader := o.flags.ToRawKubeConfigLoader()
	raw, err := loader.RawConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	if err := o.namesAServer(raw, loader.ConfigAccess().GetLoadingPrecedence()); err != nil {
		return nil, err
	}
	cfg, err := o.flags.ToRESTConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	return cfg, nil
}

// namesAServer reports, as an error, why the kubeconfig raw (read from
// files, in kubectl's order) names no API server, unless a flag or the
// in-cluster environment gives one.
func (o *options) namesAServer(raw clientcmdapi.Config, files []string) error {
	set := func(f *string) bool { return f != nil && *f != "" }
	if set(o.flags.APIServer) || set(o.flags.ClusterName) || os.Getenv("KUBERNETES_SERVICE_HOST") != "" {
		return nil
	}
	var read []string
	for _, f := range files {
		if _, err := os.Stat(f); err == nil {
			read = append(read, f)
		}
	}
	where := strings.Join(read, ", ")
	const advice = "point kubectl at your cluster first (kubectl pmem uses the same settings)"
	if len(read) == 0 {
		return errors.New("no cluster to talk to: no kubeconfig found (--kubeconfig, $KUBECONFIG or ~/.kube/config) and no --server; " + advice)
	}
	name := raw.CurrentContext
	if set(o.flags.Context) {
		name = *o.flags.Context
	}
	if name == "" {
		return fmt.Errorf("no cluster to talk to: kubeconfig %s has no current-context and no --context or --server was given; run kubectl config use-context NAME, or pass --context", where)
	}
	ctx, ok := raw.Contexts[name]
	if !ok {
		return nil // client-go says so itself: "context was not found for specified context"
	}
	if c, ok := raw.Clusters[ctx.Cluster]; !ok || c.Server == "" {
		return fmt.Errorf("no cluster to talk to: context %q names cluster %q, which kubeconfig %s does not define with a server; %s", name, ctx.Cluster, where, advice)
	}
	return nil
}

func parseWorkload(s string) (schema.GroupVersionResource, string, string, error) {
	typ, name, ok := strings.Cut(s, "/")
	if !ok || name == "" {
		return schema.GroupVersionResource{}, "", "", fmt.Errorf("workload %q: want TYPE/NAME, e.g. deployment/redis", s)
	}
	// kubectl also accepts TYPE.GROUP (deployments.apps).
	typ, _, _ = strings.Cut(strings.ToLower(typ), ".")
	k, ok := kinds[typ]
	if !ok {
		return schema.GroupVersionResource{}, "", "", fmt.Errorf("workload type %q is not one the webhook copies annotations for: use deployment, statefulset, daemonset, replicaset, job, cronjob or replicationcontroller", typ)
	}
	return k.gvr, k.kind, name, nil
}

// annotate writes (enable) or removes (disable) the pmem annotations on the
// workload's own metadata with a merge patch, as `kubectl annotate` does.
// A value the webhook refuses comes back as the API error, with its message.
func (o *options) annotate(ctx context.Context, enable bool, fs *pflag.FlagSet, workload string, stdout, stderr io.Writer) error {
	gvr, kind, name, err := parseWorkload(workload)
	if err != nil {
		return err
	}
	ns, err := o.namespace()
	if err != nil {
		return err
	}
	cfg, err := o.restConfig()
	if err != nil {
		return err
	}
	dc, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	api := dc.Resource(gvr).Namespace(ns)
	obj, err := api.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	ann := map[string]any{}
	if enable {
		ann[patch.AnnotationDirect] = "true"
		for key, v := range o.values {
			flagName := strings.TrimPrefix(key, patch.Prefix)
			if fs.Changed(flagName) {
				ann[key] = *v
			}
		}
	} else {
		for k := range obj.GetAnnotations() {
			if strings.HasPrefix(k, patch.Prefix) {
				ann[k] = nil
			}
		}
		if len(ann) == 0 {
			fmt.Fprintf(stdout, "%s/%s has no pmem.alibabacloud.com annotations: nothing to disable\n", strings.ToLower(kind), name)
		}
	}
	if len(ann) > 0 {
		body, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
		if obj, err = api.Patch(ctx, name, types.MergePatchType, body, metav1.PatchOptions{FieldManager: "kubectl-pmem"}); err != nil {
			return err
		}
		verb := "enabled"
		if !enable {
			verb = "disabled"
		}
		fmt.Fprintf(stdout, "%s/%s %s\n", strings.ToLower(kind), name, verb)
	}
	// Annotations the user wrote on the template win over the workload's
	// and the webhook never removes them: say so, or disable looks broken.
	path, _ := patch.WorkloadTemplatePath(kind)
	tmplAnn, _, _ := unstructured.NestedStringMap(obj.Object, append(path, "metadata", "annotations")...)
	copied := map[string]bool{}
	for _, s := range strings.Split(tmplAnn[patch.AnnotationFromWorkload], ",") {
		copied[patch.Prefix+strings.TrimSpace(s)] = true
	}
	var own []string
	for k := range tmplAnn {
		if strings.HasPrefix(k, patch.Prefix) && !copied[k] && k != patch.AnnotationFromWorkload && k != patch.AnnotationStatus {
			own = append(own, k)
		}
	}
	sort.Strings(own)
	// The status annotation on a template (not a pod) comes only from the
	// offline injector: the pieces are in the template and no annotation
	// change removes them.
	if !enable && tmplAnn[patch.AnnotationStatus] == patch.StatusInjected {
		fmt.Fprintf(stderr, "warning: the pod template of %s/%s was injected offline (kubectl pmem inject): its pods stay on PMEM; in the stored manifest remove %s, run kubectl pmem inject -f on it again (that removes the injected pieces) and apply it\n",
			strings.ToLower(kind), name, patch.AnnotationDirect)
	}
	if len(own) > 0 {
		fmt.Fprintf(stderr, "warning: the pod template of %s/%s sets %s itself; those win over the workload's annotations and are not changed by kubectl pmem: edit %s.metadata.annotations\n",
			strings.ToLower(kind), name, strings.Join(own, ", "), strings.Join(path, "."))
	}
	return nil
}

// PodStatus is one line of `kubectl pmem status`.
type PodStatus struct {
	Pod      string `json:"pod"`
	Injected bool   `json:"injected"`
	// Reason says why a pod is not injected.
	Reason   string `json:"reason,omitempty"`
	Mode     string `json:"mode,omitempty"`
	PVC      string `json:"pvc,omitempty"`
	PVCPhase string `json:"pvcPhase,omitempty"`
	// Placement summarises what the preload placed on PMEM, read from its
	// status files on the pmem volume through exec, or says why it is not
	// available.
	Placement string `json:"placement"`
	// Records are the preload's status records of the live processes of
	// each container that mounts the PMEM volume, key=value as the preload
	// writes them (docs/node.md), plus container=<the container's name>.
	Records []map[string]string `json:"records,omitempty"`
}

func (o *options) status(ctx context.Context, workload string, stdout io.Writer) error {
	ns, err := o.namespace()
	if err != nil {
		return err
	}
	cfg, err := o.restConfig()
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	selector := labels.Everything()
	if workload != "" {
		gvr, kind, name, err := parseWorkload(workload)
		if err != nil {
			return err
		}
		dc, err := dynamic.NewForConfig(cfg)
		if err != nil {
			return err
		}
		obj, err := dc.Resource(gvr).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		// The template's labels select the workload's pods for every kind,
		// CronJobs included (they have no selector of their own).
		path, _ := patch.WorkloadTemplatePath(kind)
		l, _, _ := unstructured.NestedStringMap(obj.Object, append(path, "metadata", "labels")...)
		if len(l) == 0 {
			return fmt.Errorf("%s: the pod template has no labels to find its pods by", workload)
		}
		selector = labels.SelectorFromSet(l)
	}
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector.String()})
	if err != nil {
		return err
	}
	out := []PodStatus{}
	for i := range pods.Items {
		out = append(out, podStatus(ctx, cs, cfg, &pods.Items[i]))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Pod < out[j].Pod })
	switch o.output {
	case "json":
		b, err := json.MarshalIndent(out, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(stdout, "%s\n", b)
		return err
	case "yaml":
		b, err := yaml.Marshal(out)
		if err != nil {
			return err
		}
		_, err = stdout.Write(b)
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tINJECTED\tMODE\tPVC\tPVC PHASE\tPLACEMENT\tREASON")
	for _, s := range out {
		fmt.Fprintf(tw, "%s\t%v\t%s\t%s\t%s\t%s\t%s\n", s.Pod, s.Injected, dash(s.Mode), dash(s.PVC), dash(s.PVCPhase), s.Placement, dash(s.Reason))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func podStatus(ctx context.Context, cs kubernetes.Interface, cfg *rest.Config, p *corev1.Pod) PodStatus {
	s := PodStatus{Pod: p.Name}
	a := p.Annotations
	s.Injected = a[patch.AnnotationStatus] == patch.StatusInjected
	direct, hasDirect := a[patch.AnnotationDirect]
	switch {
	case s.Injected:
	case !hasDirect:
		s.Reason = "not requested: no " + patch.AnnotationDirect + " annotation on the pod (annotate the workload or its pod template)"
	case direct == "false":
		s.Reason = patch.AnnotationDirect + ` is "false"`
	default:
		s.Reason = "requested but not injected: the pod was created before the webhook ran for it (installed later, or unavailable under failurePolicy Ignore); delete the pod to recreate it"
	}
	if !s.Injected {
		s.Placement = "-"
		return s
	}
	s.Mode = string(patch.ModeFSDAX)
	if m := a[patch.AnnotationMode]; m != "" {
		s.Mode = m
	}
	for _, v := range p.Spec.Volumes {
		if v.Name != patch.PMEMVolumeName {
			continue
		}
		switch {
		case v.Ephemeral != nil:
			s.PVC = p.Name + "-" + patch.PMEMVolumeName
		case v.PersistentVolumeClaim != nil:
			s.PVC = v.PersistentVolumeClaim.ClaimName
		}
	}
	if s.PVC != "" {
		pvc, err := cs.CoreV1().PersistentVolumeClaims(p.Namespace).Get(ctx, s.PVC, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			s.PVCPhase = "NotFound"
		case err != nil:
			s.PVCPhase = "unknown: " + err.Error()
		default:
			s.PVCPhase = string(pvc.Status.Phase)
		}
	}
	s.Placement, s.Records = placement(ctx, cfg, p, s.Mode)
	return s
}
