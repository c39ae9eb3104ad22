package reliability

import (
	"math"
	"os"
	"strings"
	"testing"
)

func TestParseHistogram(t *testing.T) {
	text, err := os.ReadFile("testdata/apiserver-metrics.txt")
	if err != nil {
		t.Fatal(err)
	}
	h, err := ParseHistogram(string(text), APIServerWebhookMetric, map[string]string{"name": "pod.pmem.alibabacloud.com", "type": "admit"})
	if err != nil {
		t.Fatal(err)
	}
	// Both rejected="false" and rejected="true" series are summed; the
	// other webhook's series is not.
	if h.Count != 110 || math.Abs(h.Sum-0.32) > 1e-9 {
		t.Errorf("count %v sum %v, want 110 and 0.32", h.Count, h.Sum)
	}
	wantBuckets := []Bucket{{0.005, 100}, {0.025, 108}, {0.1, 110}, {math.Inf(1), 110}}
	if len(h.Buckets) != len(wantBuckets) {
		t.Fatalf("buckets %v, want %v", h.Buckets, wantBuckets)
	}
	for i, b := range wantBuckets {
		if h.Buckets[i] != b {
			t.Errorf("bucket %d = %v, want %v", i, h.Buckets[i], b)
		}
	}
	if n, bound := h.InLowest(); n != 100 || bound != 0.005 {
		t.Errorf("InLowest = %v, %v; want 100, 0.005", n, bound)
	}

	if _, err := ParseHistogram(string(text), APIServerWebhookMetric, map[string]string{"name": "missing"}); err == nil {
		t.Error("no error for a selection that matches nothing")
	}
	if _, err := ParseHistogram(APIServerWebhookMetric+`_bucket{name="x",le="0.1" 3`, APIServerWebhookMetric, nil); err == nil {
		t.Error("no error for an unterminated label set")
	}
}

func TestParseSampleEscapes(t *testing.T) {
	metric, labels, value, err := parseSample(`weird_metric{path="a \"quoted\" \\ value, with } brace",x="1"} 2.5 1700000000`)
	if err != nil {
		t.Fatal(err)
	}
	if metric != "weird_metric" || labels["path"] != `a "quoted" \ value, with } brace` || labels["x"] != "1" || value != 2.5 {
		t.Errorf("got %q %q %v", metric, labels, value)
	}
}

func TestHistogramSubAndQuantile(t *testing.T) {
	before := Histogram{Count: 10, Sum: 0.01, Buckets: []Bucket{{0.005, 10}, {0.025, 10}, {math.Inf(1), 10}}}
	after := Histogram{Count: 110, Sum: 0.61, Buckets: []Bucket{{0.005, 60}, {0.025, 100}, {math.Inf(1), 110}}}
	d := after.Sub(before)
	if d.Count != 100 || math.Abs(d.Sum-0.6) > 1e-9 {
		t.Errorf("Sub: count %v sum %v, want 100 and 0.6", d.Count, d.Sum)
	}
	for _, tc := range []struct{ q, want float64 }{
		{0.25, 0.0025}, // 25 of the 50 in (0, 5ms]: half way
		{0.5, 0.005},   // exactly the top of the first bucket
		{0.7, 0.015},   // 20 of 40 in (5, 25ms]
		{0.99, 0.025},  // in +Inf: the highest finite bound
	} {
		if got := d.Quantile(tc.q); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("Quantile(%v) = %v, want %v", tc.q, got, tc.want)
		}
	}
	if !math.IsNaN((Histogram{}).Quantile(0.5)) {
		t.Error("Quantile of an empty histogram is not NaN")
	}
	table := d.Table(1e-3, "ms")
	for _, want := range []string{"(0, 5] ms", "50", "(25, +Inf] ms"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct{ msg, want string }{
		{`Internal error occurred: failed calling webhook "pod.pmem.alibabacloud.com": failed to call webhook: Post "https://127.0.0.1:1/mutate-v1-pod?timeout=5s": dial tcp 127.0.0.1:1: connect: connection refused`, "webhook call failed: connection refused"},
		{`Internal error occurred: failed calling webhook "pod.pmem.alibabacloud.com": failed to call webhook: Post "https://127.0.0.1:1/mutate-v1-pod?timeout=5s": EOF`, "webhook call failed: EOF (connection closed mid-request)"},
		{`Internal error occurred: failed calling webhook "pod.pmem.alibabacloud.com": failed to call webhook: Post "https://127.0.0.1:1/mutate-v1-pod?timeout=5s": context deadline exceeded`, "webhook call failed: timeout"},
		{`admission webhook "pod.pmem.alibabacloud.com" denied the request: pmem-webhook: annotation ...`, "denied by the webhook"},
	} {
		if got := Classify(errString(tc.msg)); got != tc.want {
			t.Errorf("Classify(%q) = %q, want %q", tc.msg, got, tc.want)
		}
	}
	if got := Classify(nil); got != "created" {
		t.Errorf("Classify(nil) = %q", got)
	}
}

type errString string

func (e errString) Error() string { return string(e) }
