package deploy

import (
	"fmt"
	"io/fs"
	"path"
	"strings"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
)

// Chart loads the embedded Helm chart.
func Chart() (*chart.Chart, error) {
	var bufs []*loader.BufferedFile
	err := fs.WalkDir(files, ChartDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := files.ReadFile(p)
		if err != nil {
			return err
		}
		bufs = append(bufs, &loader.BufferedFile{Name: strings.TrimPrefix(p, ChartDir+"/"), Data: b})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read embedded chart %s: %w", ChartDir, err)
	}
	c, err := loader.LoadFiles(bufs)
	if err != nil {
		return nil, fmt.Errorf("load chart %s: %w", ChartDir, err)
	}
	return c, nil
}

// RenderHelm renders the chart like `helm template <release> deploy/helm/pmem-webhook
// --namespace <namespace>` with values merged over values.yaml (validated against
// values.schema.json), in Helm's install order. NOTES.txt is not part of the output.
// It renders for Helm's default capabilities, what `helm template` without a cluster uses.
func RenderHelm(release, namespace string, values map[string]any) ([]byte, error) {
	return renderHelmFor(release, namespace, values, chartutil.DefaultCapabilities)
}

// SelfSignedValues returns the chart values of `--set certs.mode=selfSigned`: the webhook issues
// its own certificate and writes the caBundle itself, no cert-manager (docs/deploy.md). A new map
// on every call, so a caller may add to it.
func SelfSignedValues() map[string]any {
	return map[string]any{"certs": map[string]any{"mode": "selfSigned"}}
}

// renderHelmFor is RenderHelm for the given capabilities: a cluster's Kubernetes version and API
// versions, as `helm install` discovers them or `helm template --kube-version` sets them.
func renderHelmFor(release, namespace string, values map[string]any, caps *chartutil.Capabilities) ([]byte, error) {
	out, err := renderChart(release, namespace, values, caps)
	if err != nil {
		return nil, err
	}
	for name := range out {
		if path.Base(name) == "NOTES.txt" {
			delete(out, name)
		}
	}
	hooks, manifests, err := releaseutil.SortManifests(out, nil, releaseutil.InstallOrder)
	if err != nil {
		return nil, fmt.Errorf("helm render %s: %w", ChartDir, err)
	}
	if len(hooks) > 0 {
		// Helm would apply hooks outside the release; the chart is meant to have none.
		return nil, fmt.Errorf("helm render %s: unexpected hook %s", ChartDir, hooks[0].Name)
	}
	var b strings.Builder
	for _, m := range manifests {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", m.Name, strings.TrimSpace(m.Content))
	}
	return []byte(b.String()), nil
}

// renderChart renders every template of the chart, keyed by its path.
func renderChart(release, namespace string, values map[string]any, caps *chartutil.Capabilities) (map[string]string, error) {
	c, err := Chart()
	if err != nil {
		return nil, err
	}
	vals, err := chartutil.ToRenderValues(c, values, chartutil.ReleaseOptions{
		Name: release, Namespace: namespace, Revision: 1, IsInstall: true,
	}, caps)
	if err != nil {
		return nil, fmt.Errorf("helm values: %w", err)
	}
	out, err := engine.Render(c, vals)
	if err != nil {
		return nil, fmt.Errorf("helm render %s: %w", ChartDir, err)
	}
	return out, nil
}
