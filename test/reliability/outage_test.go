package reliability

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/pmem-webhook/pmem-webhook/patch"
)

// webhookFailed is how the apiserver reports that it could not call us.
const webhookFailed = `failed calling webhook "pod.pmem.alibabacloud.com"`

// TestOutage shows what each failure policy deploy/ offers does while the
// webhook is down (port closed: connection refused) or hung (accepts
// connections, never answers: the configuration's 5 s timeout), for pods
// without the annotation, with direct "true", and with direct "false".
func TestOutage(t *testing.T) {
	env := Setup(t)
	ctx := context.Background()
	cs := clientset(t, env)
	ns := namespace(t, env, "outage")

	// A real webhook first, so the configuration is known to work, then
	// stopped: its URL now refuses connections.
	w := webhookProcess(t, env)
	down := w.URL
	ca := w.Bundle.CAPEM
	w.Stop()

	// A hung webhook: the TCP handshake completes, nothing is ever read.
	hung, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hung.Close() })
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := hung.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()

	hungAddr := hung.Addr().String()
	hungURL := "https://" + hungAddr

	type want struct {
		created, injected bool
	}
	type pod struct {
		name        string
		annotations map[string]string
	}
	plain := pod{"plain", nil}
	optedIn := pod{"opted-in", map[string]string{patch.AnnotationDirect: "true", patch.AnnotationSize: "1Gi"}}
	optedOut := pod{"opted-out", map[string]string{patch.AnnotationDirect: "false"}}

	for _, sc := range []struct {
		name, variant, url string
		wants              map[string]want
		// inUse recognizes this configuration from the previous one.
		inUse func(err error, took time.Duration) bool
	}{
		{"Fail, webhook down", VariantDefault, down, map[string]want{
			plain.name: {created: true}, optedIn.name: {}, optedOut.name: {created: true}},
			func(err error, _ time.Duration) bool {
				return err != nil && strings.Contains(err.Error(), "connection refused")
			}},
		{"Ignore, webhook down", VariantIgnore, down, map[string]want{
			plain.name: {created: true}, optedIn.name: {created: true}, optedOut.name: {created: true}},
			func(err error, _ time.Duration) bool { return err == nil }},
		// Admitted both before and after the switch, but only after the
		// call timed out.
		{"Ignore, webhook hung", VariantIgnore, hungURL, map[string]want{
			plain.name: {created: true}, optedIn.name: {created: true}, optedOut.name: {created: true}},
			func(err error, took time.Duration) bool { return err == nil && took > 4*time.Second }},
		{"Fail, webhook hung", VariantDefault, hungURL, map[string]want{
			plain.name: {created: true}, optedIn.name: {}, optedOut.name: {created: true}},
			func(err error, _ time.Duration) bool { return err != nil && strings.Contains(err.Error(), hungAddr) }},
	} {
		t.Run(sc.name, func(t *testing.T) {
			mwc, err := WebhookConfiguration(sc.variant, sc.url, ca)
			if err != nil {
				t.Fatal(err)
			}
			wantPolicy := "Fail"
			if sc.variant == VariantIgnore {
				wantPolicy = "Ignore"
			}
			if got := string(*mwc.Webhooks[0].FailurePolicy); got != wantPolicy {
				t.Fatalf("rendered failurePolicy %s, want %s", got, wantPolicy)
			}
			if err := Apply(ctx, env.CP.Config, mwc); err != nil {
				t.Fatal(err)
			}
			waitForConfig(t, cs, ns, sc.inUse)

			for _, p := range []pod{plain, optedIn, optedOut} {
				obj := PlainPod(ns, strings.ToLower(strings.NewReplacer(",", "", " ", "-").Replace(sc.name))+"-"+p.name)
				obj.Annotations = p.annotations
				start := time.Now()
				got, err := cs.CoreV1().Pods(ns).Create(ctx, obj, metav1.CreateOptions{})
				took := time.Since(start)
				w := sc.wants[p.name]
				switch {
				case w.created && err != nil:
					t.Errorf("%s: refused after %s, want created: %v", p.name, took.Round(time.Millisecond), err)
				case !w.created && err == nil:
					t.Errorf("%s: created, want refused", p.name)
				case !w.created && !strings.Contains(err.Error(), webhookFailed):
					t.Errorf("%s: %v, want the apiserver's %q", p.name, err, webhookFailed)
				case err == nil && got.Annotations[patch.AnnotationStatus] != "":
					t.Errorf("%s: created with status %q, want unmutated", p.name, got.Annotations[patch.AnnotationStatus])
				case err == nil && len(got.Spec.InitContainers) != 0:
					t.Errorf("%s: has init containers %v, want unmutated", p.name, got.Spec.InitContainers)
				}
				outcome := "created unmutated"
				if err != nil {
					outcome = "refused: " + shorten(err.Error(), 220)
				}
				t.Logf("%-9s %6s  %s", p.name, took.Round(time.Millisecond), outcome)
				// A pod the webhook is not asked about must not wait for
				// it: matchConditions are evaluated in the apiserver.
				// Nor must a pod that opted out with direct: "false".
				if (p.annotations == nil || p.name == optedOut.name) && took > 2*time.Second {
					t.Errorf("%s: took %s; a pod without the annotation must not wait for the webhook", p.name, took)
				}
			}
		})
	}
}

// waitForConfig waits until the apiserver uses the configuration just
// applied (it picks changes up asynchronously): in use reports whether a
// dry-run create of an annotated pod behaved as the new configuration makes
// it behave.
func waitForConfig(t *testing.T, cs kubernetes.Interface, ns string, inUse func(err error, took time.Duration) bool) {
	t.Helper()
	probe := AnnotatedPod(ns, "config-probe")
	deadline := time.Now().Add(60 * time.Second)
	for {
		start := time.Now()
		_, err := cs.CoreV1().Pods(ns).Create(context.Background(), probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if inUse(err, time.Since(start)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the apiserver did not switch to the new webhook configuration within 60 s (last probe: %v)", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
