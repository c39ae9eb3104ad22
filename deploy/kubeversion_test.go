package deploy

import (
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chartutil"
)

// kubeVersionMessage is what the chart's "pmem-webhook.requireKubeVersion" fails with.
const kubeVersionMessage = "pmem-webhook needs Kubernetes 1.30 or newer, this cluster is "

// TestHelmKubeVersionGuard pins which capabilities the chart renders for. Rendering without a
// cluster must work (Helm's default capabilities, v1.20.0 for a `go install`ed helm, a newer
// version for a release build), and a cluster older than 1.30, real or named by --kube-version,
// must fail with a message naming its version.
func TestHelmKubeVersionGuard(t *testing.T) {
	// What a 1.20 API server's discovery lists (a subset is enough: the guard looks for one
	// group/version that it does not serve).
	cluster120 := chartutil.VersionSet{"v1", "apps/v1", "admissionregistration.k8s.io/v1", "flowcontrol.apiserver.k8s.io/v1beta1"}
	for _, tc := range []struct {
		name    string
		version string // .Capabilities.KubeVersion.Version
		apis    chartutil.VersionSet
		wantErr string // "" renders
	}{
		{"helm template, go-installed helm (default v1.20.0)", "v1.20.0", chartutil.DefaultVersionSet, ""},
		{"helm template, release-built helm (default from its client-go)", "v1.35.0", chartutil.DefaultVersionSet, ""},
		{"--kube-version 1.30.0", "v1.30.0", chartutil.DefaultVersionSet, ""},
		{"GKE 1.31 cluster", "v1.31.2-gke.1000", chartutil.DefaultVersionSet, ""},
		{"--kube-version 1.29.0", "v1.29.0", chartutil.DefaultVersionSet, kubeVersionMessage + "v1.29.0"},
		{"EKS 1.29 cluster", "v1.29.4-eks-036c24b", chartutil.DefaultVersionSet, kubeVersionMessage + "v1.29.4-eks-036c24b"},
		// "-0" in the constraint: a 1.30 pre-release already has the GA API.
		{"1.30 pre-release", "v1.30.0-rc.1", chartutil.DefaultVersionSet, ""},
		{"real v1.20.0 cluster", "v1.20.0", cluster120, kubeVersionMessage + "v1.20.0"},
		// Indistinguishable from Helm's default; docs/deploy.md says so.
		{"--kube-version 1.20.0", "v1.20.0", chartutil.DefaultVersionSet, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			caps := chartutil.DefaultCapabilities.Copy()
			caps.KubeVersion = chartutil.KubeVersion{Version: tc.version}
			caps.APIVersions = tc.apis
			for _, values := range []map[string]any{nil, selfSignedValues} {
				out, err := RenderHelmFor("pmem-webhook", Namespace, values, caps)
				switch {
				case tc.wantErr == "" && err != nil:
					t.Fatalf("values %v: want a rendering, got %v", values, err)
				case tc.wantErr == "" && !strings.Contains(string(out), "kind: MutatingWebhookConfiguration"):
					t.Fatalf("values %v: rendering has no MutatingWebhookConfiguration:\n%s", values, out)
				case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
					t.Fatalf("values %v: want an error containing %q, got %v", values, tc.wantErr, err)
				}
			}
		})
	}
}
