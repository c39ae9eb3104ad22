package webhook

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"sigs.k8s.io/yaml"
)

// review wraps a pod object (JSON) in a CREATE AdmissionReview.
func review(object string) []byte {
	return []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","namespace":"default","object":` + object + `}}`)
}

// Issue 14 row 8: a pod sent with the opt-in as a label is allowed
// unchanged, with a warning saying where the key belongs.
func TestHandlerWarnsOptInAsLabel(t *testing.T) {
	h, _ := newTestHandler(t)
	body := review(`{"metadata":{"name":"r","labels":{"pmem.alibabacloud.com/direct":"true"},"annotations":{"pmem.alibabacloud.com/size":"1Gi"}},"spec":{"containers":[{"name":"redis","image":"redis"}]}}`)
	resp, code := serve(t, h, body)
	if code != http.StatusOK || !resp.Response.Allowed || resp.Response.Patch != nil {
		t.Fatalf("code %d, response %+v; want allowed without a patch", code, resp.Response)
	}
	if len(resp.Response.Warnings) != 1 || !strings.Contains(resp.Response.Warnings[0], "move it to metadata.annotations") {
		t.Errorf("warnings = %q", resp.Response.Warnings)
	}
}

// Issue 14 row 4 through the partial decoder: envFrom is read, so the
// webhook warns as pmem-inject does.
func TestHandlerWarnsEnvFrom(t *testing.T) {
	h, _ := newTestHandler(t)
	body := review(`{"metadata":{"name":"r","annotations":{"pmem.alibabacloud.com/direct":"true"}},"spec":{"containers":[{"name":"redis","image":"redis","command":["redis-server","--save","","--appendonly","no"],"envFrom":[{"secretRef":{"name":"rt"}}],"resources":{"limits":{"memory":"1Gi"}}}]}}`)
	resp, code := serve(t, h, body)
	if code != http.StatusOK || !resp.Response.Allowed || resp.Response.Patch == nil {
		t.Fatalf("code %d, response %+v; want injected", code, resp.Response)
	}
	if len(resp.Response.Warnings) != 1 || !strings.Contains(resp.Response.Warnings[0], `envFrom secretRef "rt" may set LD_PRELOAD`) {
		t.Errorf("warnings = %q", resp.Response.Warnings)
	}
}

// Issue 14 row 1 through the partial decoder: each Windows marker reaches
// patch.Apply and the pod is denied with the field that said so.
func TestHandlerDeniesWindows(t *testing.T) {
	cases := map[string]struct{ spec, want string }{
		"os":           {`"os":{"name":"windows"},`, `spec.os.name=\"windows\"`},
		"nodeSelector": {`"nodeSelector":{"kubernetes.io/os":"windows"},`, `spec.nodeSelector kubernetes.io/os=\"windows\"`},
		"affinity": {`"affinity":{"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"kubernetes.io/os","operator":"In","values":["windows"]}]}]}}},`,
			"every term requires kubernetes.io/os"},
		"pod securityContext":       {`"securityContext":{"windowsOptions":{"runAsUserName":"ContainerUser"}},`, "spec.securityContext.windowsOptions"},
		"container securityContext": {`"initContainers":[{"name":"setup","image":"x","securityContext":{"windowsOptions":{"hostProcess":false}}}],`, "spec.initContainers[0].securityContext.windowsOptions"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			h, _ := newTestHandler(t)
			body := review(`{"metadata":{"name":"r","annotations":{"pmem.alibabacloud.com/direct":"true"}},"spec":{` + tc.spec + `"containers":[{"name":"redis","image":"redis","resources":{"limits":{"memory":"1Gi"}}}]}}`)
			resp, code := serve(t, h, body)
			if code != http.StatusOK || resp.Response.Allowed || resp.Response.Result == nil {
				t.Fatalf("code %d, response %+v; want denied", code, resp.Response)
			}
			msg := resp.Response.Result.Message
			want := strings.ReplaceAll(tc.want, `\"`, `"`)
			if !strings.Contains(msg, want) || !strings.Contains(msg, "PMEM injection is Linux-only") {
				t.Errorf("denial %q lacks %q", msg, want)
			}
		})
	}
}

// Issue 14 row 3 through the webhook: native sidecars get mounts and env in
// place, and the init container is inserted before the first targeted
// sidecar; the patched pod equals patch's golden file.
func TestHandlerNativeSidecarGolden(t *testing.T) {
	for _, name := range []string{"native-sidecar-redis", "native-sidecar-after-init"} {
		t.Run(name, func(t *testing.T) {
			y, err := os.ReadFile(filepath.Join("..", "patch", "testdata", name+".yaml"))
			if err != nil {
				t.Fatal(err)
			}
			object, err := yaml.YAMLToJSON(y)
			if err != nil {
				t.Fatal(err)
			}
			h, _ := newTestHandler(t)
			resp, code := serve(t, h, review(string(object)))
			if code != http.StatusOK || !resp.Response.Allowed || resp.Response.Patch == nil {
				t.Fatalf("code %d, response %+v; want injected", code, resp.Response)
			}
			got := applyPatch(t, object, resp.Response.Patch)
			golden, err := os.ReadFile(filepath.Join("..", "patch", "testdata", name+".golden.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			want := &corev1.Pod{}
			if err := yaml.UnmarshalStrict(golden, want); err != nil {
				t.Fatal(err)
			}
			if !equality.Semantic.DeepEqual(want, got) {
				t.Errorf("patched pod differs from golden (-want +got):\n%s", cmp.Diff(want, got))
			}
		})
	}
}

// Issue 14 row 5 through the webhook, whose fast path used to skip every
// pod marked injected: a truly injected pod (reinvocation) is still a
// no-op, a stale mark gets injected, a stale injection is denied.
func TestHandlerStatusAnnotationNotTrustedAlone(t *testing.T) {
	podJSON := func(t *testing.T, file string, mutate func(string) string) string {
		y, err := os.ReadFile(filepath.Join("..", "patch", "testdata", file))
		if err != nil {
			t.Fatal(err)
		}
		j, err := yaml.YAMLToJSON([]byte(mutate(string(y))))
		if err != nil {
			t.Fatal(err)
		}
		return string(j)
	}
	same := func(s string) string { return s }
	cases := []struct {
		name, file string
		mutate     func(string) string
		patched    bool
		denial     string
	}{
		{name: "reinvocation of an injected pod", file: "redis-single.golden.yaml", mutate: same},
		{name: "reinvocation of an injected native sidecar", file: "native-sidecar-after-init.golden.yaml", mutate: same},
		{name: "marked injected, nothing injected", file: "stale-status.yaml", mutate: same, patched: true},
		{name: "injected fsdax, now kmem", file: "redis-single.golden.yaml", mutate: func(s string) string {
			return strings.Replace(s, `pmem.alibabacloud.com/direct: "true"`, "pmem.alibabacloud.com/direct: \"true\"\n    pmem.alibabacloud.com/mode: kmem", 1)
		}, denial: `container "redis" has MEMKIND_MEM_TIERS="KIND:FS_DAX`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h, _ := newTestHandler(t)
			resp, code := serve(t, h, review(podJSON(t, tc.file, tc.mutate)))
			if code != http.StatusOK {
				t.Fatalf("code %d", code)
			}
			r := resp.Response
			switch {
			case tc.denial != "":
				if r.Allowed || r.Result == nil || !strings.Contains(r.Result.Message, tc.denial) {
					t.Errorf("response %+v; want denied with %q", r, tc.denial)
				}
			case tc.patched:
				if !r.Allowed || r.Patch == nil || !strings.Contains(string(r.Patch), "pmem-memkind-init") {
					t.Errorf("response %+v; want injected", r)
				}
			default:
				if !r.Allowed || r.Patch != nil || len(r.Warnings) > 0 {
					t.Errorf("response %+v; want a no-op", r)
				}
			}
		})
	}
}

// Regression (issue 14, already passing): keys with "/" and "~" are escaped
// as JSON Pointer tokens (patch.TestEscapePointerToken), and a container with LD_PRELOAD listed twice gets
// the preload in both entries (the later one is what the container sees),
// and the result is a no-op on reinvocation.
func TestPatchRegressions(t *testing.T) {
	h, _ := newTestHandler(t)
	object := `{"metadata":{"name":"r","annotations":{"pmem.alibabacloud.com/direct":"true","pmem.alibabacloud.com/mode":"kmem","x.example/a~b":"1"}},` +
		`"spec":{"nodeSelector":{"zone/a~b":"z"},"containers":[{"name":"redis","image":"redis","command":["redis-server"],"resources":{"limits":{"memory":"1Gi"}},` +
		`"env":[{"name":"LD_PRELOAD","value":"/a.so"},{"name":"X","value":"1"},{"name":"LD_PRELOAD","value":"/b.so"}]}]}}`
	resp, code := serve(t, h, review(object))
	if code != http.StatusOK || !resp.Response.Allowed || resp.Response.Patch == nil {
		t.Fatalf("code %d, response %+v; want injected", code, resp.Response)
	}
	p := string(resp.Response.Patch)
	for _, want := range []string{`"/metadata/annotations/pmem.alibabacloud.com~1status"`, `"/spec/nodeSelector/pmem.alibabacloud.com~1kmem"`} {
		if !strings.Contains(p, want) {
			t.Errorf("patch lacks %s: %s", want, p)
		}
	}
	got := applyPatch(t, []byte(object), resp.Response.Patch)
	if got.Annotations["x.example/a~b"] != "1" || got.Spec.NodeSelector["zone/a~b"] != "z" || got.Spec.NodeSelector["pmem.alibabacloud.com/kmem"] != "true" {
		t.Errorf("keys with / and ~ mangled: %v %v", got.Annotations, got.Spec.NodeSelector)
	}
	env := got.Spec.Containers[0].Env
	if env[0].Value != "/opt/pmem-memkind/libpmem-preload.so:/a.so" || env[2].Value != "/opt/pmem-memkind/libpmem-preload.so:/b.so" {
		t.Errorf("duplicate LD_PRELOAD entries: %+v", env)
	}
	again, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	resp, _ = serve(t, h, review(string(again)))
	if !resp.Response.Allowed || resp.Response.Patch != nil {
		t.Errorf("reinvocation: %+v; want a no-op", resp.Response)
	}
}
