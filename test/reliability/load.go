package reliability

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pmem-webhook/pmem-webhook/patch"
)

// Load is an open-loop pod-creation load through the apiserver: pod i is sent
// at start + i/Rate whether or not earlier ones have returned (a closed loop
// would slow down exactly when the webhook does and hide it), bounded by
// Rate x Duration pods, MaxInFlight concurrent requests and Timeout each.
type Load struct {
	Rate        float64       // pods per second
	Duration    time.Duration // sending window
	MaxInFlight int           // 0: 256
	Timeout     time.Duration // per request; 0: 30 s
	Namespace   string
	Prefix      string // pod names are <Prefix>-<i>
	DryRun      bool
	// Pod builds pod i; nil means AnnotatedPod.
	Pod func(ns, name string) *corev1.Pod
	// OnSent, if set, is called (from the sending goroutine) after pod i
	// was handed to a worker: tests inject faults at a given point.
	OnSent func(i int)
}

// Outcome is what one create returned.
type Outcome struct {
	Name       string
	Start, End time.Time
	Err        error
}

// Class sorts an outcome into what a user or controller sees.
func (o Outcome) Class() string { return Classify(o.Err) }

// Classify names the kind of failure of a pod create (the apiserver wraps a
// webhook call failure in its own 500 with the transport error text).
func Classify(err error) string {
	if err == nil {
		return "created"
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "denied the request"):
		return "denied by the webhook"
	case strings.Contains(msg, "failed calling webhook"):
		for _, c := range []struct{ sub, class string }{
			{"connection refused", "webhook call failed: connection refused"},
			{"connection reset", "webhook call failed: connection reset"},
			{"EOF", "webhook call failed: EOF (connection closed mid-request)"},
			{"Client.Timeout", "webhook call failed: timeout"},
			{"context deadline exceeded", "webhook call failed: timeout"},
			{"x509", "webhook call failed: TLS certificate"},
			{"tls:", "webhook call failed: TLS"},
		} {
			if strings.Contains(msg, c.sub) {
				return c.class
			}
		}
		return "webhook call failed: other"
	case errors.Is(err, context.DeadlineExceeded):
		return "client timeout"
	}
	if s, ok := err.(apierrors.APIStatus); ok {
		st := s.Status()
		return fmt.Sprintf("apiserver %d %s", st.Code, st.Reason)
	}
	return "client error: " + msg
}

// Report summarizes a load run.
type Report struct {
	Outcomes []Outcome
	// Start is when the first pod was due; Elapsed is until the last
	// request returned.
	Start   time.Time
	Elapsed time.Duration
	// MaxLag is how late the most delayed send was (in-flight cap or a
	// starved client), so the achieved rate is honest.
	MaxLag time.Duration
}

// Classes counts outcomes by Class.
func (r *Report) Classes() map[string]int {
	m := map[string]int{}
	for _, o := range r.Outcomes {
		m[o.Class()]++
	}
	return m
}

// Failed counts outcomes other than "created".
func (r *Report) Failed() int {
	n := 0
	for _, o := range r.Outcomes {
		if o.Err != nil {
			n++
		}
	}
	return n
}

// Latency is the q-quantile of the create latency of successful requests.
func (r *Report) Latency(q float64) time.Duration {
	var d []time.Duration
	for _, o := range r.Outcomes {
		if o.Err == nil {
			d = append(d, o.End.Sub(o.Start))
		}
	}
	if len(d) == 0 {
		return 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[min(int(q*float64(len(d))), len(d)-1)]
}

// String is a one-paragraph summary for test logs.
func (r *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d pods in %s (max send lag %s), latency p50 %s p99 %s;",
		len(r.Outcomes), r.Elapsed.Round(time.Millisecond), r.MaxLag.Round(time.Millisecond),
		r.Latency(0.5).Round(100*time.Microsecond), r.Latency(0.99).Round(100*time.Microsecond))
	classes := r.Classes()
	keys := make([]string, 0, len(classes))
	for k := range classes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, " %s: %d;", k, classes[k])
	}
	return strings.TrimSuffix(b.String(), ";")
}

// Run sends the load and waits for every request to return.
func (l Load) Run(ctx context.Context, cfg *rest.Config) (*Report, error) {
	if l.Rate <= 0 || l.Duration <= 0 {
		return nil, fmt.Errorf("load: rate %v and duration %s must be positive", l.Rate, l.Duration)
	}
	if l.MaxInFlight == 0 {
		l.MaxInFlight = 256
	}
	if l.Timeout == 0 {
		l.Timeout = 30 * time.Second
	}
	if l.Pod == nil {
		l.Pod = AnnotatedPod
	}
	n := int(l.Rate * l.Duration.Seconds())
	c := rest.CopyConfig(cfg)
	// The client-side limiter must not be what sets the rate.
	c.QPS, c.Burst = float32(2*l.Rate+50), 2*l.MaxInFlight
	c.WarningHandler = rest.NoWarnings{}
	cs, err := kubernetes.NewForConfig(c)
	if err != nil {
		return nil, err
	}
	opts := metav1.CreateOptions{}
	if l.DryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	rep := &Report{Outcomes: make([]Outcome, n), Start: time.Now()}
	sem := make(chan struct{}, l.MaxInFlight)
	var wg sync.WaitGroup
	interval := time.Duration(float64(time.Second) / l.Rate)
	for i := range n {
		due := rep.Start.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(d):
			}
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if lag := time.Since(due); lag > rep.MaxLag {
			rep.MaxLag = lag
		}
		name := fmt.Sprintf("%s-%d", l.Prefix, i)
		pod := l.Pod(l.Namespace, name)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			rctx, cancel := context.WithTimeout(ctx, l.Timeout)
			defer cancel()
			o := Outcome{Name: name, Start: time.Now()}
			_, o.Err = cs.CoreV1().Pods(l.Namespace).Create(rctx, pod, opts)
			o.End = time.Now()
			rep.Outcomes[i] = o
		}()
		if l.OnSent != nil {
			l.OnSent(i)
		}
	}
	wg.Wait()
	rep.Elapsed = time.Since(rep.Start)
	return rep, nil
}

// AnnotatedPod is a single-container Redis pod that opted in, with an
// explicit size and a memory limit: the webhook injects it without warnings.
func AnnotatedPod(ns, name string) *corev1.Pod {
	p := PlainPod(ns, name)
	p.Annotations = map[string]string{patch.AnnotationDirect: "true", patch.AnnotationSize: "1Gi"}
	return p
}

// PlainPod is the same pod without any pmem annotation.
func PlainPod(ns, name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": "reliability"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name:  "redis",
			Image: "pmem-webhook/redis-debian:7.0",
			Resources: corev1.ResourceRequirements{
				Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("512Mi")},
			},
		}}},
	}
}
