package deploy

import (
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chartutil"
)

// kubeVersionMessage is what the chart's "pmem-webhook.requireKubeVersion" fails with.
const kubeVersionMessage = "pmem-webhook needs Kubernetes 1.30 or newer; Helm renders for "

// TestHelmKubeVersionGuard pins which capabilities the chart renders for. Rendering without a
// cluster must work with Helm's default capabilities: v1.20.0 for a helm built without link
// flags, v1.(N+15).0 for a helm 3.N release binary (its client-go's version). A cluster older
// than 1.30, or a --kube-version below it that is not this helm's default, must fail with a
// message naming the version.
func TestHelmKubeVersionGuard(t *testing.T) {
	// A cluster's capabilities as `helm install` discovers them: group/versions and, only from
	// discovery, "<group/version>/<Kind>" entries. A subset is enough: the guard looks for
	// v1/Namespace.
	cluster := chartutil.VersionSet{"v1", "v1/Namespace", "v1/Pod", "apps/v1", "apps/v1/Deployment", "admissionregistration.k8s.io/v1"}
	for _, tc := range []struct {
		name    string
		helm    string // .Capabilities.HelmVersion.Version
		version string // .Capabilities.KubeVersion.Version
		apis    chartutil.VersionSet
		wantErr string // "" renders
	}{
		{"helm template, Go-tool helm (default v1.20.0)", "v3.22.0", "v1.20.0", chartutil.DefaultVersionSet, ""},
		{"helm template, unstamped go-installed helm", "v3.22", "v1.20.0", chartutil.DefaultVersionSet, ""},
		{"helm template, helm v3.14 release (default v1.29.0)", "v3.14.4", "v1.29.0", chartutil.DefaultVersionSet, ""},
		{"helm template, helm v3.12 release (default v1.27.0)", "v3.12.3", "v1.27.0", chartutil.DefaultVersionSet, ""},
		{"helm template, helm v3.19 release (default v1.34.0)", "v3.19.0", "v1.34.0", chartutil.DefaultVersionSet, ""},
		{"--kube-version 1.30.0", "v3.22.0", "v1.30.0", chartutil.DefaultVersionSet, ""},
		{"--kube-version 1.29.0", "v3.22.0", "v1.29.0", chartutil.DefaultVersionSet, kubeVersionMessage + "v1.29.0"},
		{"--kube-version 1.27.3, helm v3.14 release", "v3.14.4", "v1.27.3", chartutil.DefaultVersionSet, kubeVersionMessage + "v1.27.3"},
		{"--kube-version 1.28.0, helm v3.14 release", "v3.14.4", "v1.28.0", chartutil.DefaultVersionSet, kubeVersionMessage + "v1.28.0"},
		// Indistinguishable from this helm's default; docs/deploy.md says so.
		{"--kube-version 1.20.0", "v3.22.0", "v1.20.0", chartutil.DefaultVersionSet, ""},
		{"--kube-version 1.29.0, helm v3.14 release", "v3.14.4", "v1.29.0", chartutil.DefaultVersionSet, ""},
		// A helm library embedded in another program may report any version, or none.
		{"embedded helm without a version", "", "v1.20.0", chartutil.DefaultVersionSet, ""},
		{"embedded helm without a version, --kube-version 1.29.0", "", "v1.29.0", chartutil.DefaultVersionSet, kubeVersionMessage + "v1.29.0"},
		{"helm v4 version, v1.20.0", "v4.0.0", "v1.20.0", chartutil.DefaultVersionSet, ""},
		// Not a release: the 3.22 source linked with a 1.29 default but no version stamp.
		{"unstamped helm linked with a v1.29 default", "v3.22", "v1.29.0", chartutil.DefaultVersionSet, kubeVersionMessage + "v1.29.0"},
		{"GKE 1.31 cluster", "v3.22.0", "v1.31.2-gke.1000", cluster, ""},
		{"EKS 1.29 cluster", "v3.22.0", "v1.29.4-eks-036c24b", cluster, kubeVersionMessage + "v1.29.4-eks-036c24b"},
		// A cluster whose version equals a helm default is still a cluster.
		{"v1.29.0 cluster, helm v3.14 release", "v3.14.4", "v1.29.0", cluster, kubeVersionMessage + "v1.29.0"},
		{"v1.20.0 cluster", "v3.22.0", "v1.20.0", cluster, kubeVersionMessage + "v1.20.0"},
		// "-0" in the constraint: a 1.30 pre-release already has the GA API.
		{"1.30 pre-release cluster", "v3.22.0", "v1.30.0-rc.1", cluster, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			caps := chartutil.DefaultCapabilities.Copy()
			caps.HelmVersion.Version = tc.helm
			caps.KubeVersion = chartutil.KubeVersion{Version: tc.version}
			caps.APIVersions = tc.apis
			for _, values := range []map[string]any{nil, SelfSignedValues()} {
				out, err := renderHelmFor("pmem-webhook", Namespace, values, caps)
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
