package reliability

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pmem-webhook/pmem-webhook/patch"
)

// TestTLSSurface dials the port of the real webhook binary: TLS 1.2 and 1.3
// only, AEAD cipher suites, and no HTTP/2 however a client asks for it.
func TestTLSSurface(t *testing.T) {
	env := Setup(t)
	w, err := StartWebhookProcess(context.Background(), env.WebhookBin, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(w.Bundle.CAPEM)
	dial := func(cfg *tls.Config) (*tls.Conn, error) {
		cfg.RootCAs, cfg.ServerName = pool, "127.0.0.1"
		return tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", w.Addr, cfg)
	}

	for _, v := range []struct {
		name    string
		version uint16
		ok      bool
	}{
		{"TLS 1.0", tls.VersionTLS10, false},
		{"TLS 1.1", tls.VersionTLS11, false},
		{"TLS 1.2", tls.VersionTLS12, true},
		{"TLS 1.3", tls.VersionTLS13, true},
	} {
		t.Run(v.name, func(t *testing.T) {
			conn, err := dial(&tls.Config{MinVersion: v.version, MaxVersion: v.version}) //nolint:gosec // probing old versions on purpose
			if !v.ok {
				if err == nil {
					conn.Close()
					t.Fatalf("handshake with %s succeeded, want it refused", v.name)
				}
				t.Logf("refused: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("handshake with %s: %v", v.name, err)
			}
			defer conn.Close()
			st := conn.ConnectionState()
			secure := false
			for _, cs := range tls.CipherSuites() {
				secure = secure || cs.ID == st.CipherSuite
			}
			if !secure || !strings.Contains(tls.CipherSuiteName(st.CipherSuite), "GCM") && !strings.Contains(tls.CipherSuiteName(st.CipherSuite), "CHACHA20") {
				t.Errorf("negotiated %s, want an AEAD suite from crypto/tls's secure list", tls.CipherSuiteName(st.CipherSuite))
			}
			t.Logf("negotiated %s", tls.CipherSuiteName(st.CipherSuite))
		})
	}

	t.Run("ALPN h2 only is refused", func(t *testing.T) {
		conn, err := dial(&tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}})
		if err == nil {
			defer conn.Close()
			if p := conn.ConnectionState().NegotiatedProtocol; p == "h2" {
				t.Fatal("server agreed to h2")
			}
			t.Fatalf("handshake offering only h2 succeeded (protocol %q), want no_application_protocol", conn.ConnectionState().NegotiatedProtocol)
		}
		if !strings.Contains(err.Error(), "no application protocol") {
			t.Errorf("error %v, want the no_application_protocol alert", err)
		}
	})
	t.Run("ALPN h2 and http/1.1 gets http/1.1", func(t *testing.T) {
		conn, err := dial(&tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if p := conn.ConnectionState().NegotiatedProtocol; p != "http/1.1" {
			t.Errorf("negotiated %q, want http/1.1", p)
		}
	})
	t.Run("HTTP/2 prior knowledge gets HTTP/1.1", func(t *testing.T) {
		// Without ALPN, a client may just start talking HTTP/2 (the
		// connection preface); a server that speaks it answers with a
		// SETTINGS frame, ours must not.
		conn, err := dial(&tls.Config{MinVersion: tls.VersionTLS12})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(conn, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil && line == "" {
			t.Logf("connection closed without an answer: %v", err)
			return
		}
		if !strings.HasPrefix(line, "HTTP/1.1 ") {
			t.Errorf("answer to the HTTP/2 preface starts %q, want an HTTP/1.1 status line or a close", line)
		}
		t.Logf("answer: %s", strings.TrimSpace(line))
	})
}

func withoutTokenVolume(p *corev1.Pod) corev1.PodSpec {
	s := p.Spec.DeepCopy()
	isToken := func(name string) bool { return strings.HasPrefix(name, "kube-api-access-") }
	s.Volumes = slices.DeleteFunc(s.Volumes, func(v corev1.Volume) bool { return isToken(v.Name) })
	for _, cs := range [][]corev1.Container{s.InitContainers, s.Containers} {
		for i := range cs {
			cs[i].VolumeMounts = slices.DeleteFunc(cs[i].VolumeMounts, func(m corev1.VolumeMount) bool { return isToken(m.Name) })
		}
	}
	return *s
}

// TestAnnotationsCannotEscalate: annotations never choose images, host
// paths, privileges, environment or storage classes. A pod carrying every
// such annotation a user might try is mutated exactly like the same pod with
// only the opt-in (compared field by field on the dry-run result from the
// real apiserver), and that mutation uses the administrator's image and
// class, no host path and a restricted init container.
func TestAnnotationsCannotEscalate(t *testing.T) {
	env := Setup(t)
	webhookProcess(t, env)
	cs := clientset(t, env)
	ns := namespace(t, env, "escalate")
	ctx := context.Background()
	dry := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}

	base := AnnotatedPod(ns, "plain")
	want, err := cs.CoreV1().Pods(ns).Create(ctx, base, dry)
	if err != nil {
		t.Fatal(err)
	}

	hostile := AnnotatedPod(ns, "hostile")
	for k, v := range map[string]string{
		patch.Prefix + "image":                      "evil.example.com/root:latest",
		patch.Prefix + "memkind-image":              "evil.example.com/root:latest",
		patch.Prefix + "init-image":                 "evil.example.com/root:latest",
		patch.Prefix + "lib-dir":                    "/",
		patch.Prefix + "host-path":                  "/",
		patch.Prefix + "hostPath":                   "/var/run/docker.sock",
		patch.Prefix + "mount-path":                 "/etc",
		patch.Prefix + "privileged":                 "true",
		patch.Prefix + "run-as-user":                "0",
		patch.Prefix + "capabilities":               "SYS_ADMIN",
		patch.Prefix + "allow-privilege-escalation": "true",
		patch.Prefix + "ld-preload":                 "/tmp/evil.so",
		patch.Prefix + "env":                        "LD_PRELOAD=/tmp/evil.so",
		patch.Prefix + "storageClassName":           "hostpath",
		patch.Prefix + "node-selector":              "kubernetes.io/hostname=master",
	} {
		hostile.Annotations[k] = v
	}
	got, err := cs.CoreV1().Pods(ns).Create(ctx, hostile, dry)
	if err != nil {
		t.Fatalf("dry-run create of the pod with unknown annotations: %v", err)
	}
	if got.Annotations[patch.AnnotationStatus] != patch.StatusInjected {
		t.Fatalf("pod not injected (status %q)", got.Annotations[patch.AnnotationStatus])
	}
	// Same spec as the plain annotated pod, apart from the service-account
	// token volume, whose name the apiserver randomizes.
	if a, b := withoutTokenVolume(want), withoutTokenVolume(got); !equality.Semantic.DeepEqual(a, b) {
		t.Errorf("unknown annotations changed the mutation (-plain +hostile):\n%s", cmp.Diff(a, b))
	}

	args, err := DeployedArgs()
	if err != nil {
		t.Fatal(err)
	}
	memkindImage := patch.DefaultMemkindImage
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--memkind-image="); ok {
			memkindImage = v
		}
	}
	var sawPMEM bool
	for _, v := range got.Spec.Volumes {
		if v.HostPath != nil {
			t.Errorf("volume %q is a hostPath %q", v.Name, v.HostPath.Path)
		}
		if v.Name == "pmem" {
			sawPMEM = true
			if v.Ephemeral == nil || v.Ephemeral.VolumeClaimTemplate == nil {
				t.Errorf("volume pmem is not a generic ephemeral volume: %+v", v.VolumeSource)
			} else if sc := v.Ephemeral.VolumeClaimTemplate.Spec.StorageClassName; sc == nil || *sc != patch.DefaultStorageClass {
				t.Errorf("pmem storage class %v, want the administrator's %s", sc, patch.DefaultStorageClass)
			}
		}
	}
	if !sawPMEM {
		t.Error("no pmem volume")
	}
	if len(got.Spec.InitContainers) != 1 {
		t.Fatalf("%d init containers, want 1", len(got.Spec.InitContainers))
	}
	ic := got.Spec.InitContainers[0]
	if ic.Image != memkindImage {
		t.Errorf("init container image %q, want the configured %q", ic.Image, memkindImage)
	}
	sc := ic.SecurityContext
	switch {
	case sc == nil:
		t.Fatal("init container has no securityContext")
	case sc.Privileged != nil && *sc.Privileged:
		t.Error("init container is privileged")
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Error("init container may escalate privileges")
	case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0:
		t.Errorf("init container may run as root: runAsNonRoot %v runAsUser %v", sc.RunAsNonRoot, sc.RunAsUser)
	case sc.Capabilities == nil || len(sc.Capabilities.Add) > 0 || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL":
		t.Errorf("init container capabilities %+v, want drop ALL and nothing added", sc.Capabilities)
	}
	for _, c := range got.Spec.Containers {
		if c.Image != base.Spec.Containers[0].Image {
			t.Errorf("container %s image changed to %q", c.Name, c.Image)
		}
		if c.SecurityContext != nil {
			t.Errorf("container %s got a securityContext %+v", c.Name, c.SecurityContext)
		}
		for _, e := range c.Env {
			if strings.Contains(e.Value, "evil") {
				t.Errorf("container %s env %s=%q comes from an annotation", c.Name, e.Name, e.Value)
			}
		}
	}
	if len(got.Spec.NodeSelector) != 0 {
		t.Errorf("node selector %v on an fsdax pod", got.Spec.NodeSelector)
	}

	// Values of the real annotations that try the same: refused.
	for _, kv := range [][2]string{
		{patch.AnnotationStorageClass, "hostpath"},
		{patch.AnnotationProcesses, "redis-server,LD_PRELOAD=/tmp/evil.so"},
		{patch.AnnotationContainers, "../../etc"},
		{patch.AnnotationClaim, "/var/run/docker.sock"},
	} {
		p := AnnotatedPod(ns, "try")
		p.Annotations[kv[0]] = kv[1]
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, p, dry); err == nil || !strings.Contains(err.Error(), webhookDenied) {
			t.Errorf("%s=%q: %v, want the webhook's denial", kv[0], kv[1], err)
		}
	}
}
