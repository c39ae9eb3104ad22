// Command pmem-demo is `make demo`: it starts a real control plane (etcd,
// kube-apiserver, kube-controller-manager built by `make controlplane-bins`)
// and the webhook, registers the webhook with the configuration deploy/
// ships, applies an example manifest (deploy/examples/redis-pmem.yaml), and
// prints the pod the apiserver stored and the PVC the controller-manager
// generated, marking with "+" what the webhook added. Then it stops
// everything, or with -keep waits for ^C so you can look around with kubectl.
//
// It lives under test/ because it runs the test harness's control plane
// (test/cluster); no product package (cmd/, patch/, webhook/, ...) may
// import test/ (make lint checks it).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/pmem-webhook/pmem-webhook/deploy"
	"github.com/pmem-webhook/pmem-webhook/patch"
	"github.com/pmem-webhook/pmem-webhook/test/cluster"
)

func main() {
	manifest := flag.String("f", "deploy/examples/redis-pmem.yaml", "manifest to apply (relative paths are resolved against the repository root)")
	namespace := flag.String("n", metav1.NamespaceDefault, "namespace for objects that name none")
	keep := flag.Bool("keep", false, "keep the control plane running until interrupted (prints a kubeconfig)")
	timeout := flag.Duration("timeout", 2*time.Minute, "bound on start-up and on waiting for the pod and PVC")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Stdout, *manifest, *namespace, *keep, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "pmem-demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out io.Writer, manifest, namespace string, keep bool, timeout time.Duration) error {
	if !filepath.IsAbs(manifest) {
		root, err := cluster.RepoRoot()
		if err != nil {
			return err
		}
		manifest = filepath.Join(root, manifest)
	}
	data, err := os.ReadFile(manifest)
	if err != nil {
		return err
	}
	objs, err := deploy.Objects(data)
	if err != nil {
		return fmt.Errorf("%s: %w", manifest, err)
	}

	section(out, "Control plane")
	start := time.Now()
	cp, err := cluster.Start(ctx, cluster.Options{Timeout: timeout, Logf: func(f string, a ...any) { fmt.Fprintf(out, "  "+f+"\n", a...) }})
	if err != nil {
		return err
	}
	defer func() {
		section(out, "Stopping")
		cp.Stop()
		fmt.Fprintln(out, "  control plane stopped, working directory removed")
	}()
	wh, err := cp.StartWebhook(ctx, cluster.WebhookOptions{})
	if err != nil {
		return err
	}
	defer wh.Stop() //nolint:errcheck // best effort on the way out
	fmt.Fprintf(out, "  webhook serving at %s%s, registered with deploy/'s MutatingWebhookConfiguration\n", wh.URL, deploy.WebhookPath)
	fmt.Fprintf(out, "  ready in %s\n", time.Since(start).Round(100*time.Millisecond))

	c, err := client.New(cp.Config, client.Options{})
	if err != nil {
		return err
	}
	section(out, "Applying "+relToRoot(manifest))
	var workloads []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetNamespace() == "" && o.GetKind() != "Namespace" && o.GetKind() != "StorageClass" {
			o.SetNamespace(namespace)
		}
		err := c.Create(ctx, o)
		switch {
		case apierrors.IsAlreadyExists(err):
			fmt.Fprintf(out, "  %s/%s unchanged\n", strings.ToLower(o.GetKind()), o.GetName())
		case err != nil:
			return fmt.Errorf("create %s %s: %w", o.GetKind(), o.GetName(), err)
		default:
			fmt.Fprintf(out, "  %s/%s created in namespace %s\n", strings.ToLower(o.GetKind()), o.GetName(), o.GetNamespace())
		}
		if o.GetKind() == "Deployment" {
			workloads = append(workloads, o)
		}
	}
	if len(workloads) == 0 {
		return fmt.Errorf("%s has no Deployment to show", manifest)
	}

	for _, w := range workloads {
		if err := show(ctx, out, cp.Config, c, w, timeout); err != nil {
			return err
		}
	}

	if keep {
		section(out, "Running")
		fmt.Fprintf(out, "  export KUBECONFIG=%s\n  kubectl get pods,pvc -A\n  (^C stops everything)\n", cp.KubeconfigFile)
		<-ctx.Done()
	}
	return nil
}

// show waits for an injected pod of Deployment w and its PVC and prints both.
func show(ctx context.Context, out io.Writer, cfg *rest.Config, c client.Client, w *unstructured.Unstructured, timeout time.Duration) error {
	var d appsv1.Deployment
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(w.Object, &d); err != nil {
		return err
	}
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	var pod *corev1.Pod
	err = poll(ctx, func() (bool, error) {
		var pods corev1.PodList
		if err := c.List(ctx, &pods, client.InNamespace(d.Namespace), client.MatchingLabelsSelector{Selector: sel}); err != nil {
			return false, err
		}
		for i := range pods.Items {
			pod = &pods.Items[i]
			return true, nil
		}
		// A denial will not go away by waiting: report it at once.
		if msg := failedCreate(ctx, c, d.Namespace); strings.Contains(msg, "denied the request") {
			return false, errDenied
		}
		return false, nil
	})
	if errors.Is(err, errDenied) {
		return fmt.Errorf("the pods of Deployment %s/%s were refused at admission:%s", d.Namespace, d.Name, failedCreate(ctx, c, d.Namespace))
	}
	if err != nil {
		return fmt.Errorf("no pod of Deployment %s/%s: %w%s", d.Namespace, d.Name, err, failedCreate(ctx, c, d.Namespace))
	}
	printPod(out, pod, &d.Spec.Template)

	if !injected(pod) {
		fmt.Fprintf(out, "\n  (not injected: the pod template lacks %s: \"true\")\n", patch.AnnotationDirect)
		return nil
	}
	var pvc corev1.PersistentVolumeClaim
	key := client.ObjectKey{Namespace: pod.Namespace, Name: pod.Name + "-" + patch.PMEMVolumeName}
	if err := poll(ctx, func() (bool, error) {
		err := c.Get(ctx, key, &pvc)
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, err
	}); err != nil {
		if isClaimVolume(pod) {
			return nil // an existing claim (annotation claim): nothing is generated
		}
		return fmt.Errorf("PVC %s was not generated: %w", key, err)
	}
	printPVC(out, &pvc)
	printWarnings(ctx, out, cfg, &d)
	return nil
}

var errDenied = errors.New("pod creation denied")

func injected(p *corev1.Pod) bool {
	return p.Annotations[patch.AnnotationStatus] == patch.StatusInjected
}

func isClaimVolume(p *corev1.Pod) bool {
	for _, v := range p.Spec.Volumes {
		if v.Name == patch.PMEMVolumeName && v.PersistentVolumeClaim != nil {
			return true
		}
	}
	return false
}

// failedCreate returns the ReplicaSet controller's FailedCreate messages in
// ns, which is where a webhook denial of a Deployment's pods shows up.
func failedCreate(ctx context.Context, c client.Client, ns string) string {
	var events corev1.EventList
	if err := c.List(context.WithoutCancel(ctx), &events, client.InNamespace(ns)); err != nil {
		return ""
	}
	var b strings.Builder
	for _, e := range events.Items {
		if e.Reason == "FailedCreate" {
			fmt.Fprintf(&b, "\n  %s %s: %s", e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Message)
		}
	}
	return b.String()
}

func poll(ctx context.Context, cond func() (bool, error)) error {
	var last error
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		if errors.Is(err, errDenied) {
			return err
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func section(out io.Writer, title string) { fmt.Fprintf(out, "\n== %s\n", title) }

func relToRoot(p string) string {
	if root, err := cluster.RepoRoot(); err == nil {
		if rel, err := filepath.Rel(root, p); err == nil && !strings.HasPrefix(rel, "..") {
			return rel
		}
	}
	return p
}

// mark is "+ " for what the webhook added (absent from the template).
func mark(added bool) string {
	if added {
		return "+ "
	}
	return "  "
}

func printPod(out io.Writer, pod *corev1.Pod, tmpl *corev1.PodTemplateSpec) {
	owner := ""
	for _, ref := range pod.OwnerReferences {
		owner = fmt.Sprintf(" (created by %s %s)", ref.Kind, ref.Name)
	}
	section(out, fmt.Sprintf("Pod %s/%s%s — \"+\" marks what the webhook added", pod.Namespace, pod.Name, owner))
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	defer tw.Flush()

	fmt.Fprintln(tw, "  annotations:")
	for _, k := range slices.Sorted(maps.Keys(pod.Annotations)) {
		_, had := tmpl.Annotations[k]
		fmt.Fprintf(tw, "  %s  %s:\t%s\n", mark(!had), k, pod.Annotations[k])
	}

	fmt.Fprintln(tw, "  volumes:")
	for _, v := range pod.Spec.Volumes {
		fmt.Fprintf(tw, "  %s  %s\t%s\n", mark(!hasVolume(tmpl, v.Name) && !strings.HasPrefix(v.Name, "kube-api-access-")), v.Name, describeVolume(v))
	}

	if len(pod.Spec.InitContainers) > 0 {
		fmt.Fprintln(tw, "  init containers:")
	}
	for _, ic := range pod.Spec.InitContainers {
		added := findContainer(tmpl.Spec.InitContainers, ic.Name) == nil
		fmt.Fprintf(tw, "  %s  %s\timage %s\n", mark(added), ic.Name, ic.Image)
		fmt.Fprintf(tw, "      command:\t%s\n", strings.Join(append(append([]string{}, ic.Command...), ic.Args...), " "))
		for _, m := range ic.VolumeMounts {
			fmt.Fprintf(tw, "      mount:\t%s\n", describeMount(m))
		}
		if sc := describeSecurity(ic.SecurityContext); sc != "" {
			fmt.Fprintf(tw, "      securityContext:\t%s\n", sc)
		}
		fmt.Fprintf(tw, "      resources:\trequests %s; limits %s\n", describeResources(ic.Resources.Requests), describeResources(ic.Resources.Limits))
	}

	fmt.Fprintln(tw, "  containers:")
	for _, c := range pod.Spec.Containers {
		orig := findContainer(tmpl.Spec.Containers, c.Name)
		fmt.Fprintf(tw, "  %s  %s\timage %s, memory limit %s\n", mark(orig == nil), c.Name, c.Image, describeResources(corev1.ResourceList{corev1.ResourceMemory: c.Resources.Limits[corev1.ResourceMemory]}))
		for _, m := range c.VolumeMounts {
			added := orig == nil || !hasMount(orig, m.Name)
			if strings.HasPrefix(m.Name, "kube-api-access-") {
				added = false
			}
			fmt.Fprintf(tw, "  %s    mount:\t%s\n", mark(added), describeMount(m))
		}
		for _, e := range c.Env {
			added := orig == nil || !hasEnv(orig, e.Name, e.Value)
			fmt.Fprintf(tw, "  %s    env:\t%s=%s\n", mark(added), e.Name, e.Value)
		}
	}
}

func printPVC(out io.Writer, pvc *corev1.PersistentVolumeClaim) {
	section(out, fmt.Sprintf("PVC %s/%s — generated by kube-controller-manager from the pod's ephemeral volume", pvc.Namespace, pvc.Name))
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	sc := "<none>"
	if pvc.Spec.StorageClassName != nil {
		sc = *pvc.Spec.StorageClassName
	}
	size := pvc.Spec.Resources.Requests[corev1.ResourceStorage]
	var modes []string
	for _, m := range pvc.Spec.AccessModes {
		modes = append(modes, string(m))
	}
	var owners []string
	for _, ref := range pvc.OwnerReferences {
		owners = append(owners, fmt.Sprintf("%s %s", ref.Kind, ref.Name))
	}
	fmt.Fprintf(tw, "  name:\t%s\n", pvc.Name)
	fmt.Fprintf(tw, "  storage class:\t%s\n", sc)
	fmt.Fprintf(tw, "  size:\t%s\n", size.String())
	fmt.Fprintf(tw, "  access modes:\t%s\n", strings.Join(modes, ", "))
	fmt.Fprintf(tw, "  owner:\t%s (deleted together with it)\n", strings.Join(owners, ", "))
	fmt.Fprintf(tw, "  labels:\t%s\n", labels.Set(pvc.Labels).String())
	phase := string(pvc.Status.Phase)
	if pvc.Status.Phase == corev1.ClaimPending {
		phase += " (this control plane runs no PMEM CSI driver; on a PMEM node the " + sc + " class provisions it)"
	}
	fmt.Fprintf(tw, "  phase:\t%s\n", phase)
}

// printWarnings shows the admission warnings for the pod template: they go to
// whoever creates the pod (here the ReplicaSet controller), so a server-side
// dry-run create of the template shows them to the user.
func printWarnings(ctx context.Context, out io.Writer, cfg *rest.Config, d *appsv1.Deployment) {
	h := &warnings{}
	wcfg := rest.CopyConfig(cfg)
	wcfg.WarningHandler = h
	c, err := client.New(wcfg, client.Options{})
	if err != nil {
		return
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: d.Name + "-", Namespace: d.Namespace, Labels: d.Spec.Template.Labels, Annotations: d.Spec.Template.Annotations},
		Spec:       d.Spec.Template.Spec,
	}
	if err := c.Create(ctx, pod, client.DryRunAll); err != nil {
		return
	}
	section(out, "Admission warnings for this pod template (server-side dry-run)")
	if len(h.msgs) == 0 {
		fmt.Fprintln(out, "  none")
	}
	for _, m := range h.msgs {
		fmt.Fprintf(out, "  - %s\n", m)
	}
}

type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) HandleWarningHeader(code int, _ string, text string) {
	if code != 299 || text == "" {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, text)
}

func describeVolume(v corev1.Volume) string {
	switch {
	case v.Ephemeral != nil && v.Ephemeral.VolumeClaimTemplate != nil:
		s := v.Ephemeral.VolumeClaimTemplate.Spec
		sc := "<default>"
		if s.StorageClassName != nil {
			sc = *s.StorageClassName
		}
		size := s.Resources.Requests[corev1.ResourceStorage]
		mode := ""
		if s.VolumeMode != nil {
			mode = ", " + string(*s.VolumeMode)
		}
		return fmt.Sprintf("generic ephemeral volume: PVC <pod>-%s, storage class %s, %s%s", v.Name, sc, size.String(), mode)
	case v.PersistentVolumeClaim != nil:
		return "existing PVC " + v.PersistentVolumeClaim.ClaimName
	case v.EmptyDir != nil:
		if v.EmptyDir.SizeLimit != nil {
			return "emptyDir, sizeLimit " + v.EmptyDir.SizeLimit.String()
		}
		return "emptyDir"
	case v.Projected != nil:
		return "projected (service-account token, CA, namespace)"
	}
	return "other"
}

func describeMount(m corev1.VolumeMount) string {
	mode := "rw"
	if m.ReadOnly {
		mode = "ro"
	}
	return fmt.Sprintf("%s -> %s (%s)", m.Name, m.MountPath, mode)
}

func describeSecurity(sc *corev1.SecurityContext) string {
	if sc == nil {
		return ""
	}
	var parts []string
	if sc.RunAsNonRoot != nil && *sc.RunAsNonRoot {
		parts = append(parts, "runAsNonRoot")
	}
	if sc.RunAsUser != nil {
		parts = append(parts, fmt.Sprintf("uid %d", *sc.RunAsUser))
	}
	if sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
		parts = append(parts, "no privilege escalation")
	}
	if sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem {
		parts = append(parts, "read-only root")
	}
	if sc.Capabilities != nil && len(sc.Capabilities.Drop) > 0 {
		var drop []string
		for _, c := range sc.Capabilities.Drop {
			drop = append(drop, string(c))
		}
		parts = append(parts, "drop "+strings.Join(drop, ","))
	}
	if sc.SeccompProfile != nil {
		parts = append(parts, "seccomp "+string(sc.SeccompProfile.Type))
	}
	return strings.Join(parts, ", ")
}

func describeResources(l corev1.ResourceList) string {
	var parts []string
	for _, k := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if q, ok := l[k]; ok && !q.IsZero() {
			parts = append(parts, fmt.Sprintf("%s=%s", k, q.String()))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}

func hasVolume(t *corev1.PodTemplateSpec, name string) bool {
	for _, v := range t.Spec.Volumes {
		if v.Name == name {
			return true
		}
	}
	return false
}

func findContainer(cs []corev1.Container, name string) *corev1.Container {
	for i := range cs {
		if cs[i].Name == name {
			return &cs[i]
		}
	}
	return nil
}

func hasMount(c *corev1.Container, name string) bool {
	for _, m := range c.VolumeMounts {
		if m.Name == name {
			return true
		}
	}
	return false
}

func hasEnv(c *corev1.Container, name, value string) bool {
	for _, e := range c.Env {
		if e.Name == name && e.Value == value {
			return true
		}
	}
	return false
}
