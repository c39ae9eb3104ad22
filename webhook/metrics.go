package webhook

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Decisions as counted in metrics and logs.
const (
	DecisionInjected = "injected"
	DecisionSkipped  = "skipped"
	DecisionDenied   = "denied"
	DecisionErrored  = "errored"
)

// Metrics counts admission decisions and how long they took.
type Metrics struct {
	admissions *prometheus.CounterVec
	duration   *prometheus.HistogramVec
}

// NewMetrics registers the webhook's collectors with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		admissions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pmem_webhook_admissions_total",
			Help: "Pod admission requests by decision (injected, skipped, denied, errored).",
		}, []string{"decision"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "pmem_webhook_admission_duration_seconds",
			Help: "Time spent in the pod admission handler, by decision.",
			// Handling is microseconds; the upper buckets catch GC pauses
			// and CPU starvation, which is what an operator looks for.
			Buckets: []float64{5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 5e-3, 25e-3, 100e-3},
		}, []string{"decision"}),
	}
	for _, c := range []prometheus.Collector{m.admissions, m.duration} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	// Pre-create every series so dashboards see zeros, not gaps.
	for _, d := range []string{DecisionInjected, DecisionSkipped, DecisionDenied, DecisionErrored} {
		m.admissions.WithLabelValues(d)
		m.duration.WithLabelValues(d)
	}
	return m, nil
}

func (m *Metrics) observe(decision string, seconds float64) {
	if m == nil {
		return
	}
	m.admissions.WithLabelValues(decision).Inc()
	m.duration.WithLabelValues(decision).Observe(seconds)
}
