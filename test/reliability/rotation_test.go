package reliability

import (
	"bytes"
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pmem-webhook/pmem-webhook/patch"
)

// envInt reads a positive integer knob, for longer runs by hand.
func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// TestCertRotationUnderLoad replaces the webhook's serving certificate and
// key (same CA, as cert-manager renews them) several times while pods are
// being created through the apiserver: every admission succeeds, every
// created pod is injected, and each new certificate is served within the
// reload interval.
//
// The apiserver keeps its connections to the webhook alive, so without help
// it might never handshake again during the test and the renewed
// certificates would only be seen by the probe here. After each rotation the
// test therefore re-registers the webhook configuration with an equivalent
// but byte-different caBundle (the same CA followed by i newlines): the
// apiserver keys its webhook clients by the client config, so the next
// admissions go through a new transport that must verify the renewed
// certificate.
//
// Two cert-dir layouts: plain files replaced by rename (certs.WriteDir,
// what an init container or a sidecar writer does), and the kubelet's Secret
// volume (symlinks through ..data, swapped atomically), which is how
// cert-manager's renewals reach the pod.
func TestCertRotationUnderLoad(t *testing.T) {
	env := Setup(t)
	rate := envInt(t, "PMEM_ROTATION_RATE", 20)
	for _, tc := range []struct {
		name      string
		layout    CertLayout
		seconds   int
		rotations int
	}{
		{"files", LayoutFiles, envInt(t, "PMEM_ROTATION_SECONDS", 30), envInt(t, "PMEM_ROTATIONS", 6)},
		{"secret volume", LayoutSecretVolume, envInt(t, "PMEM_ROTATION_SECONDS", 30) / 2, envInt(t, "PMEM_ROTATIONS", 6) - 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rotateUnderLoad(t, env, tc.layout, rate, tc.seconds, tc.rotations)
		})
	}
}

func rotateUnderLoad(t *testing.T, env *Env, layout CertLayout, rate, seconds, rotations int) {
	const reload = 2 * time.Second
	w := webhookProcessLayout(t, env, layout, "--cert-reload-interval="+reload.String())
	ns := namespace(t, env, "rotation")
	ctx := context.Background()
	load := Load{Rate: float64(rate), Duration: time.Duration(seconds) * time.Second, Namespace: ns, Prefix: "rot"}

	type rotation struct {
		served     time.Duration // write -> first handshake with the new serial
		servedAt   time.Time
		reregister error
	}
	// Which connections the apiserver opens to the webhook, and when: a
	// connection first seen after a rotation was served was handshaken
	// with a renewed certificate.
	conns := SampleConns(w.Port())
	results := make(chan []rotation, 1)
	go func() {
		var out []rotation
		defer func() { results <- out }()
		gap := load.Duration / time.Duration(rotations+1)
		for i := 1; i <= rotations; i++ {
			time.Sleep(gap)
			written := time.Now()
			want, err := w.Rotate()
			if err != nil {
				t.Errorf("rotation %d: %v", i, err)
				return
			}
			r := rotation{served: -1}
			for time.Since(written) < 3*reload {
				got, err := w.ServedSerial()
				if err == nil && got.Cmp(want) == 0 {
					r.served, r.servedAt = time.Since(written), time.Now()
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			ca := append(bytes.Clone(w.Bundle.CAPEM), bytes.Repeat([]byte("\n"), i)...)
			mwc, err := WebhookConfiguration(VariantDefault, w.URL, ca)
			if err == nil {
				err = Apply(ctx, env.CP.Config, mwc)
			}
			r.reregister = err
			out = append(out, r)
		}
	}()
	rep, err := load.Run(ctx, env.CP.Config)
	if err != nil {
		t.Fatal(err)
	}
	rots := <-results
	firstSeen := conns.Stop()

	t.Logf("load: %s", rep)
	if len(rots) != rotations {
		t.Fatalf("%d rotations done, want %d", len(rots), rotations)
	}
	for i, r := range rots {
		switch {
		case r.served < 0:
			t.Errorf("rotation %d: new certificate not served within %s", i+1, 3*reload)
		case r.served > reload+time.Second:
			t.Errorf("rotation %d: new certificate served after %s, want within the reload interval %s (+1s)", i+1, r.served, reload)
		}
		if r.reregister != nil {
			t.Errorf("rotation %d: re-register: %v", i+1, r.reregister)
		}
		t.Logf("rotation %d: new certificate served %s after the write", i+1, r.served.Round(time.Millisecond))
	}
	if n := rep.Failed(); n > 0 {
		for _, o := range rep.Outcomes {
			if o.Err != nil {
				t.Errorf("%s: %v", o.Name, o.Err)
				break
			}
		}
		t.Errorf("%d of %d admissions failed during %d rotations", n, len(rep.Outcomes), rotations)
	}
	// Created is not enough: each pod must have been mutated (a webhook
	// call that failed open would also create it).
	pods, err := clientset(t, env).CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	injected := 0
	for _, p := range pods.Items {
		if p.Annotations[patch.AnnotationStatus] == patch.StatusInjected {
			injected++
		}
	}
	if injected != len(rep.Outcomes)-rep.Failed() || injected == 0 {
		t.Errorf("%d injected pods in %s, want %d", injected, ns, len(rep.Outcomes)-rep.Failed())
	}
	if len(rots) > 0 && !rots[0].servedAt.IsZero() {
		after := 0
		for p, at := range firstSeen {
			if at.After(rots[0].servedAt) && !w.IsProbe(p) {
				after++
			}
		}
		t.Logf("apiserver connections to the webhook: %d seen, %d of them opened after the first renewed certificate was served", len(firstSeen), after)
		if after == 0 {
			t.Errorf("the apiserver opened no connection after the first rotation: the renewed certificates were never verified by it")
		}
	}
	t.Logf("rotations under load: %d; admissions: %d, failed: %d, injected pods: %d", len(rots), len(rep.Outcomes), rep.Failed(), injected)
}
