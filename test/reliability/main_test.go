package reliability

import (
	"context"
	"flag"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pmem-webhook/pmem-webhook/test/cluster"
)

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	Shutdown()
	os.Exit(code)
}

func clientset(t *testing.T, env *Env) kubernetes.Interface {
	t.Helper()
	cfg := rest.CopyConfig(env.CP.Config)
	// The webhook's warnings are asserted where they matter, not logged.
	cfg.WarningHandler = rest.NoWarnings{}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// namespace creates a fresh namespace, waits for its default service
// account (the ServiceAccount admission plugin needs it) and deletes it
// after the test; its pods and PVCs go with it.
func namespace(t *testing.T, env *Env, prefix string) string {
	t.Helper()
	ctx := context.Background()
	cs := clientset(t, env)
	ns, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{})
	})
	if err := cluster.WaitForDefaultServiceAccount(ctx, env.CP.Config, ns.Name, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

// webhookProcess starts the pmem-webhook binary and registers deploy/'s
// configuration (failurePolicy Fail) pointing at it.
func webhookProcess(t *testing.T, env *Env, extra ...string) *WebhookProcess {
	t.Helper()
	return webhookProcessLayout(t, env, LayoutFiles, extra...)
}

func webhookProcessLayout(t *testing.T, env *Env, layout CertLayout, extra ...string) *WebhookProcess {
	t.Helper()
	ctx := context.Background()
	w, err := StartWebhookProcessLayout(ctx, env.WebhookBin, t.TempDir(), layout, extra...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	if _, err := cluster.RegisterWebhook(ctx, env.CP.Config, w.URL, w.Bundle.CAPEM); err != nil {
		t.Fatalf("%v (webhook log %s:\n%s)", err, w.LogPath, w.Tail(2048))
	}
	return w
}
