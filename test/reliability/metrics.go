package reliability

import (
	"bufio"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// APIServerWebhookMetric is the apiserver's own latency histogram of each
// admission webhook call (labels name, operation, rejected, type).
const APIServerWebhookMetric = "apiserver_admission_webhook_admission_duration_seconds"

// Bucket is one cumulative histogram bucket.
type Bucket struct {
	UpperBound float64 // +Inf for the last
	Count      float64 // observations <= UpperBound
}

// Histogram is a Prometheus histogram summed over the series selected.
type Histogram struct {
	Buckets []Bucket // ascending UpperBound
	Count   float64
	Sum     float64
}

// ParseHistogram reads histogram name from Prometheus text exposition and
// sums every series whose labels include all of match. It needs no
// dependency: the format of _bucket/_sum/_count lines is all it reads.
func ParseHistogram(text, name string, match map[string]string) (Histogram, error) {
	byLE := map[float64]float64{}
	var h Histogram
	found := false
	s := bufio.NewScanner(strings.NewReader(text))
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		line := s.Text()
		if !strings.HasPrefix(line, name+"_") {
			continue
		}
		metric, labels, value, err := parseSample(line)
		if err != nil {
			return h, err
		}
		if !matches(labels, match) {
			continue
		}
		switch metric {
		case name + "_bucket":
			le, err := strconv.ParseFloat(labels["le"], 64)
			if err != nil {
				return h, fmt.Errorf("%s: le=%q: %w", line, labels["le"], err)
			}
			byLE[le] += value
			found = true
		case name + "_sum":
			h.Sum += value
		case name + "_count":
			h.Count += value
		}
	}
	if err := s.Err(); err != nil {
		return h, err
	}
	if !found {
		return h, fmt.Errorf("no %s series with labels %v", name, match)
	}
	for le, c := range byLE {
		h.Buckets = append(h.Buckets, Bucket{UpperBound: le, Count: c})
	}
	sort.Slice(h.Buckets, func(i, j int) bool { return h.Buckets[i].UpperBound < h.Buckets[j].UpperBound })
	return h, nil
}

func matches(labels, want map[string]string) bool {
	for k, v := range want {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// parseSample splits `metric{a="b",c="d"} 12.5 [timestamp]`.
func parseSample(line string) (metric string, labels map[string]string, value float64, err error) {
	labels = map[string]string{}
	rest := line
	if i := strings.IndexAny(line, "{ "); i >= 0 && line[i] == '{' {
		metric = line[:i]
		rest = line[i+1:]
		for {
			rest = strings.TrimLeft(rest, ", ")
			if strings.HasPrefix(rest, "}") {
				rest = rest[1:]
				break
			}
			eq := strings.IndexByte(rest, '=')
			if eq < 0 || eq+1 >= len(rest) || rest[eq+1] != '"' {
				return "", nil, 0, fmt.Errorf("malformed labels in %q", line)
			}
			key := rest[:eq]
			rest = rest[eq+2:]
			var val strings.Builder
			closed := false
			for j := 0; j < len(rest); j++ {
				switch rest[j] {
				case '\\':
					if j+1 < len(rest) {
						j++
						switch rest[j] {
						case 'n':
							val.WriteByte('\n')
						default:
							val.WriteByte(rest[j])
						}
					}
				case '"':
					rest = rest[j+1:]
					closed = true
				default:
					val.WriteByte(rest[j])
				}
				if closed {
					break
				}
			}
			if !closed {
				return "", nil, 0, fmt.Errorf("unterminated label value in %q", line)
			}
			labels[key] = val.String()
		}
	} else if i >= 0 {
		metric, rest = line[:i], line[i:]
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return "", nil, 0, fmt.Errorf("no value in %q", line)
	}
	value, err = strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return "", nil, 0, fmt.Errorf("value of %q: %w", line, err)
	}
	return metric, labels, value, nil
}

// Sub is the histogram of the observations made between prev and h (both
// cumulative counters of the same series).
func (h Histogram) Sub(prev Histogram) Histogram {
	before := map[float64]float64{}
	for _, b := range prev.Buckets {
		before[b.UpperBound] = b.Count
	}
	out := Histogram{Count: h.Count - prev.Count, Sum: h.Sum - prev.Sum}
	for _, b := range h.Buckets {
		out.Buckets = append(out.Buckets, Bucket{UpperBound: b.UpperBound, Count: b.Count - before[b.UpperBound]})
	}
	return out
}

// Quantile estimates the q-quantile the way PromQL's histogram_quantile does:
// find the bucket holding rank q*count and interpolate linearly inside it
// (the lowest bucket starts at 0). It can only say "within this bucket": an
// estimate, as good as the bucket layout.
func (h Histogram) Quantile(q float64) float64 {
	if len(h.Buckets) == 0 || h.Count == 0 {
		return math.NaN()
	}
	total := h.Buckets[len(h.Buckets)-1].Count
	rank := q * total
	lower, below := 0.0, 0.0
	for i, b := range h.Buckets {
		if b.Count >= rank {
			if math.IsInf(b.UpperBound, 1) {
				if i == 0 {
					return math.NaN()
				}
				return h.Buckets[i-1].UpperBound
			}
			in := b.Count - below
			if in == 0 {
				return b.UpperBound
			}
			return lower + (b.UpperBound-lower)*(rank-below)/in
		}
		lower, below = b.UpperBound, b.Count
	}
	return h.Buckets[len(h.Buckets)-1].UpperBound
}

// InLowest is the number of observations in the lowest bucket, and its bound.
func (h Histogram) InLowest() (count, bound float64) {
	if len(h.Buckets) == 0 {
		return 0, math.NaN()
	}
	return h.Buckets[0].Count, h.Buckets[0].UpperBound
}

// Table renders the per-bucket counts (not cumulative) for a report.
func (h Histogram) Table(unit float64, unitName string) string {
	var b strings.Builder
	below := 0.0
	prev := "0"
	for _, bk := range h.Buckets {
		hi := "+Inf"
		if !math.IsInf(bk.UpperBound, 1) {
			hi = strconv.FormatFloat(bk.UpperBound/unit, 'g', 4, 64)
		}
		n := bk.Count - below
		pct := 0.0
		if h.Count > 0 {
			pct = 100 * n / h.Count
		}
		fmt.Fprintf(&b, "  %-18s %8.0f  %6.2f%%\n", "("+prev+", "+hi+"] "+unitName, n, pct)
		below, prev = bk.Count, hi
	}
	return b.String()
}
