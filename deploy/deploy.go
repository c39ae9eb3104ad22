// Package deploy holds the webhook's installation manifests (kustomize base, components, Helm
// chart, examples) and renders them in-process, so tests at every tier use the manifests a user
// installs instead of a hand-written copy.
//
// The manifests are embedded, so any test can render them without knowing where the source tree
// is. The control-plane tier registers the real webhook configuration like this:
//
//	cfg, err := deploy.DefaultWebhookConfiguration()      // from deploy/default, via kustomize
//	cfg, err = deploy.PointAt(cfg, "https://127.0.0.1:9443", caPEM) // url + caBundle instead of the Service
//
// RenderDefault, Kustomize and RenderHelm return the YAML that `kubectl apply -k` or `helm template`
// would produce; Objects, Find and DecodeStrict turn it into API objects.
package deploy

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"path"
	"strings"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// files is the deploy tree. "all:" keeps files that start with '_' or '.', which Helm charts use
// (templates/_helpers.tpl, .helmignore).
//
//go:embed all:default all:webhook all:certmanager all:components all:helm all:examples
var files embed.FS

// Names shared by the kustomize base and the Helm chart (with its default values).
const (
	Namespace         = "pmem-system"
	WebhookConfigName = "pmem-webhook"
	WebhookName       = "pod.pmem.alibabacloud.com"
	ServiceName       = "pmem-webhook"
	ServingCertName   = "pmem-webhook-serving-cert"
	WebhookPath       = "/mutate-v1-pod"
	// The second webhook: the workload rule (webhook.WorkloadPath).
	WorkloadWebhookName = "workload.pmem.alibabacloud.com"
	WorkloadWebhookPath = "/mutate-workloads"
	// DefaultDir is the kustomization `kubectl apply -k` installs.
	DefaultDir = "default"
	// ChartDir is the Helm chart, relative to the deploy tree.
	ChartDir = "helm/pmem-webhook"
)

// FS returns the embedded deploy tree (paths relative to deploy/, e.g. "default/kustomization.yaml").
func FS() fs.FS { return files }

// RenderDefault renders deploy/default, what `kubectl apply -k deploy/default` applies.
func RenderDefault() ([]byte, error) { return Kustomize(DefaultDir, nil) }

// Kustomize renders the kustomization in dir (relative to deploy/, e.g. "default") with kustomize's
// Go API, on an in-memory copy of the deploy tree. extra adds or replaces files in that copy (paths
// relative to deploy/), so a caller can build an overlay such as
//
//	{"overlay/kustomization.yaml": "resources: [../default]\ncomponents: [../components/failure-policy-ignore]\n"}
//
// and render "overlay".
func Kustomize(dir string, extra map[string]string) ([]byte, error) {
	mem := filesys.MakeFsInMemory()
	const root = "/deploy"
	err := fs.WalkDir(files, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := files.ReadFile(p)
		if err != nil {
			return err
		}
		return mem.WriteFile(path.Join(root, p), b)
	})
	if err != nil {
		return nil, fmt.Errorf("copy embedded deploy tree: %w", err)
	}
	for p, content := range extra {
		if !fs.ValidPath(p) {
			return nil, fmt.Errorf("extra file %q: not a relative slash-separated path inside deploy/", p)
		}
		if err := mem.WriteFile(path.Join(root, p), []byte(content)); err != nil {
			return nil, fmt.Errorf("write extra file %q: %w", p, err)
		}
	}
	opts := krusty.MakeDefaultOptions()
	resMap, err := krusty.MakeKustomizer(opts).Run(mem, path.Join(root, dir))
	if err != nil {
		return nil, fmt.Errorf("kustomize build deploy/%s: %w", dir, err)
	}
	out, err := resMap.AsYaml()
	if err != nil {
		return nil, fmt.Errorf("kustomize build deploy/%s: serialize: %w", dir, err)
	}
	return out, nil
}

// Objects splits a multi-document YAML stream into objects, skipping empty documents.
func Objects(manifests []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(manifests), 4096)
	var objs []*unstructured.Unstructured
	for i := 0; ; i++ {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return objs, nil
			}
			return nil, fmt.Errorf("decode document %d: %w", i, err)
		}
		if len(m) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		if u.GetKind() == "" || u.GetAPIVersion() == "" {
			return nil, fmt.Errorf("document %d: missing apiVersion or kind", i)
		}
		objs = append(objs, u)
	}
}

// Find returns the one object of the given kind and name. An empty name matches any name, but
// then exactly one object of that kind must exist.
func Find(objs []*unstructured.Unstructured, kind, name string) (*unstructured.Unstructured, error) {
	var found []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind && (name == "" || o.GetName() == name) {
			found = append(found, o)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return nil, fmt.Errorf("no %s named %q in the manifests", kind, name)
	default:
		return nil, fmt.Errorf("%d objects of kind %s named %q in the manifests, want 1", len(found), kind, name)
	}
}

// DecodeStrict converts obj into a typed API struct, failing on fields the type does not know
// (a misspelt field in a manifest would otherwise be dropped silently by the API server).
func DecodeStrict(obj *unstructured.Unstructured, into any) error {
	b, err := yaml.Marshal(obj.Object)
	if err != nil {
		return fmt.Errorf("%s %s: marshal: %w", obj.GetKind(), obj.GetName(), err)
	}
	if err := yaml.UnmarshalStrict(b, into); err != nil {
		return fmt.Errorf("%s %s: %w", obj.GetKind(), obj.GetName(), err)
	}
	return nil
}

// WebhookConfiguration extracts the MutatingWebhookConfiguration named pmem-webhook from rendered
// manifests.
func WebhookConfiguration(manifests []byte) (*admissionregistrationv1.MutatingWebhookConfiguration, error) {
	objs, err := Objects(manifests)
	if err != nil {
		return nil, err
	}
	u, err := Find(objs, "MutatingWebhookConfiguration", WebhookConfigName)
	if err != nil {
		return nil, err
	}
	var cfg admissionregistrationv1.MutatingWebhookConfiguration
	if err := DecodeStrict(u, &cfg); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// DefaultWebhookConfiguration is WebhookConfiguration(RenderDefault()).
func DefaultWebhookConfiguration() (*admissionregistrationv1.MutatingWebhookConfiguration, error) {
	m, err := RenderDefault()
	if err != nil {
		return nil, err
	}
	return WebhookConfiguration(m)
}

// WebhookContainerName is the server container of the webhook Deployment.
const WebhookContainerName = "webhook"

// DefaultWebhookArgs returns the pmem-webhook arguments of deploy/default's Deployment: what
// tests run the webhook with, so they exercise the settings users install.
func DefaultWebhookArgs() ([]string, error) {
	m, err := RenderDefault()
	if err != nil {
		return nil, fmt.Errorf("render deploy/default: %w", err)
	}
	objs, err := Objects(m)
	if err != nil {
		return nil, err
	}
	u, err := Find(objs, "Deployment", ServiceName)
	if err != nil {
		return nil, err
	}
	var d appsv1.Deployment
	if err := DecodeStrict(u, &d); err != nil {
		return nil, err
	}
	for _, c := range d.Spec.Template.Spec.Containers {
		if c.Name == WebhookContainerName {
			return c.Args, nil
		}
	}
	return nil, fmt.Errorf("deploy/default: Deployment %s has no container %q", d.Name, WebhookContainerName)
}

// PointAt returns a copy of cfg whose webhooks call baseURL (e.g. "https://127.0.0.1:9443")
// directly instead of the in-cluster Service, trusting caBundle: how a test registers the real
// configuration against a webhook server running outside the cluster. Each webhook keeps its
// Service path. The cert-manager CA-injection annotation is dropped, since nothing injects there.
func PointAt(cfg *admissionregistrationv1.MutatingWebhookConfiguration, baseURL string, caBundle []byte) (*admissionregistrationv1.MutatingWebhookConfiguration, error) {
	base, err := url.Parse(baseURL)
	if err != nil || base.Scheme != "https" || base.Host == "" {
		return nil, fmt.Errorf("base URL %q: want https://host:port (the API server only calls webhooks over TLS)", baseURL)
	}
	out := cfg.DeepCopy()
	delete(out.Annotations, "cert-manager.io/inject-ca-from")
	for i := range out.Webhooks {
		w := &out.Webhooks[i]
		p := WebhookPath
		if w.ClientConfig.Service != nil && w.ClientConfig.Service.Path != nil {
			p = *w.ClientConfig.Service.Path
		}
		u := *base
		u.Path = strings.TrimSuffix(base.Path, "/") + p
		s := u.String()
		w.ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: &s, CABundle: append([]byte(nil), caBundle...)}
	}
	return out, nil
}
