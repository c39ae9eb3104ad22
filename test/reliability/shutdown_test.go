package reliability

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pmem-webhook/pmem-webhook/patch"
	"github.com/pmem-webhook/pmem-webhook/webhook"
)

// TestGracefulShutdownUnderLoad sends SIGTERM to the webhook process in the
// middle of a pod-creation load through the apiserver (failurePolicy Fail,
// as deploy/ ships it) and sorts every create by how many of its webhook
// calls the webhook handled (its log, at --v=1, names the pod for every
// decision). The apiserver calls the webhook twice per pod here (the
// webhook log has two decisions for every created pod): the initial call,
// and a reinvocation (reinvocationPolicy IfNeeded), which the apiserver
// makes when an admission plugin changed the pod after the webhook's
// patch. The number of calls a created pod takes is read from the created
// pods, not assumed.
//
//   - every call handled: must be created and injected; a failure here is
//     an admission whose answer was lost in shutdown (5xx, reset);
//   - some calls handled, not all: the first call was answered, and the
//     reinvocation that followed it did not reach the handler (it arrived
//     as the server shut down); it is refused, like
//   - none handled: the apiserver could not reach the webhook any more;
//     under failurePolicy Fail these are refused, which is the outage case
//     (TestOutage); none may be created unmutated.
//
// The log cannot tell a reinvocation that never reached the handler from
// an answer to the first call that was lost on its way back; the second
// is what server's TestNoHandledAdmissionLostInShutdown rules out, with a
// client that sees each request.
//
// In a cluster the preStop sleep keeps the pod serving until its endpoint is
// gone from the Service, so the apiserver stops sending before SIGTERM; here
// the configuration points at the one process by URL, so the requests after
// SIGTERM show what a webhook without that drain would cost.
func TestGracefulShutdownUnderLoad(t *testing.T) {
	env := Setup(t)
	// --v=1: reinvocations are pass-throughs, logged only at 1.
	w := webhookProcess(t, env, "--v=1")
	ns := namespace(t, env, "shutdown")
	ctx := context.Background()

	const rate, seconds, termAt = 20, 10, 100 // SIGTERM after pod 100, at ~5 s
	var termSent time.Time
	// At 20 pods/s an admission is rarely in flight at the instant of the
	// signal, so one is made certain: a review whose body is still being
	// sent when SIGTERM arrives, and completed after it.
	slow := startSlowReview(t, w, ns)
	load := Load{Rate: rate, Duration: seconds * time.Second, Namespace: ns, Prefix: "term",
		OnSent: func(i int) {
			if i == termAt {
				termSent = time.Now()
				if err := w.Signal(syscall.SIGTERM); err != nil {
					t.Errorf("SIGTERM: %v", err)
				}
				go slow.finish(500 * time.Millisecond)
			}
		}}
	rep, err := load.Run(ctx, env.CP.Config)
	if err != nil {
		t.Fatal(err)
	}
	if res := <-slow.result; res.err != nil {
		t.Errorf("review in flight at SIGTERM: %v", res.err)
	} else {
		t.Logf("review in flight at SIGTERM (body completed 500ms after it): HTTP %d, answered %s after SIGTERM", res.status, res.at.Sub(termSent).Round(time.Millisecond))
	}
	exited, exitErr := w.Wait(30 * time.Second)
	if !exited {
		t.Fatal("webhook still running 30 s after SIGTERM")
	}
	if exitErr != nil {
		t.Errorf("webhook exit after SIGTERM: %v, want status 0", exitErr)
	}
	handled, err := w.Handled()
	if err != nil {
		t.Fatal(err)
	}
	lines, err := w.Log()
	if err != nil {
		t.Fatal(err)
	}
	var shutdownBegan, stopped time.Time
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l.Msg, "shutting down"):
			shutdownBegan = l.Time
		case l.Msg == "stopped":
			stopped = l.Time
		}
	}
	if shutdownBegan.IsZero() || stopped.IsZero() {
		t.Fatalf("webhook log has no shutdown lines:\n%s", w.Tail(2048))
	}

	pods, err := clientset(t, env).CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	injected := map[string]bool{}
	for _, p := range pods.Items {
		injected[p.Name] = p.Annotations[patch.AnnotationStatus] == patch.StatusInjected
	}

	// Calls per admission: what every created pod took (they are all the
	// same shape). A failed create with fewer handled calls had a call
	// that never reached the handler.
	calls := 0
	for _, o := range rep.Outcomes {
		if h := handled[o.Name]; o.Err == nil && h.Calls > calls {
			calls = h.Calls
		}
	}
	if calls == 0 {
		t.Fatalf("no pod was created through the webhook: load %s", rep)
	}
	var handledOK, handledFailed, refusedAfter, partial, unmutated int
	afterClasses := map[string]int{}
	example := map[string]string{}
	var lastHandled time.Time
	for _, o := range rep.Outcomes {
		h := handled[o.Name]
		switch {
		case h.Calls > 0 && o.Err == nil:
			handledOK++
			if !injected[o.Name] {
				t.Errorf("pod %s: handled and created but not injected", o.Name)
			}
			if h.Calls != calls {
				t.Errorf("pod %s: created after %d handled webhook calls, the others after %d", o.Name, h.Calls, calls)
			}
			if h.Last.After(lastHandled) {
				lastHandled = h.Last
			}
		case o.Err != nil && h.Calls > 0 && h.Calls >= calls:
			handledFailed++
			t.Errorf("pod %s: all %d webhook calls handled, yet the create failed: %v", o.Name, h.Calls, o.Err)
		case o.Err == nil:
			unmutated++
			t.Errorf("pod %s: created without the webhook (failurePolicy Fail must refuse it)", o.Name)
		default:
			refusedAfter++
			class := o.Class()
			if h.Calls > 0 {
				partial++
				class = fmt.Sprintf("%s after %d of %d calls handled", class, h.Calls, calls)
			}
			afterClasses[class]++
			example[class] = o.Err.Error()
		}
	}
	var classes []string
	for c, n := range afterClasses {
		classes = append(classes, c+": "+strconv.Itoa(n))
	}
	sort.Strings(classes)
	t.Logf("load: %s", rep)
	t.Logf("SIGTERM sent after pod %d; shutdown began %s later, in-flight drained and the process stopped %s after that; last created pod's admission handled %s after SIGTERM",
		termAt, shutdownBegan.Sub(termSent).Round(time.Millisecond), stopped.Sub(shutdownBegan).Round(time.Millisecond),
		lastHandled.Sub(termSent).Round(time.Millisecond))
	t.Logf("%d webhook calls per admission; all handled: %d created and injected, %d failed (must be 0); a call arriving as shutdown began: %d refused by the apiserver, %d of them after an earlier call was handled (%s); created unmutated: %d",
		calls, handledOK, handledFailed, refusedAfter, partial, strings.Join(classes, ", "), unmutated)
	if handledOK < termAt/2 {
		t.Errorf("only %d admissions handled before shutdown; the load did not reach the webhook", handledOK)
	}
	for c := range afterClasses {
		if !strings.HasPrefix(c, "webhook call failed: connection refused") {
			t.Logf("note: %q is not a clean refusal (a request on a connection the server was closing?): %s", c, example[c])
		}
	}
}

// slowReview is an AdmissionReview POSTed straight to the webhook port whose
// body is held back half-way: an admission that is in flight for as long as
// the test wants.
type slowReview struct {
	conn   *tls.Conn
	rest   []byte
	result chan slowResult
}

type slowResult struct {
	status int
	at     time.Time
	err    error
}

func startSlowReview(t *testing.T, w *WebhookProcess, ns string) *slowReview {
	t.Helper()
	pod, err := json.Marshal(AnnotatedPod(ns, "in-flight"))
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"in-flight-1",` +
		`"kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},` +
		`"namespace":"` + ns + `","operation":"CREATE","userInfo":{"username":"test"},"object":` + string(pod) + `}}`)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(w.Bundle.CAPEM)
	conn, err := tls.Dial("tcp", w.Addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	head := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", webhook.Path, w.Addr, len(body))
	half := len(body) / 2
	if _, err := conn.Write(append([]byte(head), body[:half]...)); err != nil {
		t.Fatal(err)
	}
	return &slowReview{conn: conn, rest: body[half:], result: make(chan slowResult, 1)}
}

// finish sends the rest of the body after delay and reads the answer.
func (s *slowReview) finish(delay time.Duration) {
	time.Sleep(delay)
	res := slowResult{}
	defer func() { s.result <- res }()
	if _, res.err = s.conn.Write(s.rest); res.err != nil {
		res.err = fmt.Errorf("send the rest of the body: %w", res.err)
		return
	}
	_ = s.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(s.conn), nil)
	if err != nil {
		res.err = fmt.Errorf("read the answer: %w", err)
		return
	}
	defer resp.Body.Close()
	res.at, res.status = time.Now(), resp.StatusCode
	var review admissionv1.AdmissionReview
	if err := json.NewDecoder(resp.Body).Decode(&review); err != nil {
		res.err = fmt.Errorf("HTTP %d, body not an AdmissionReview: %w", resp.StatusCode, err)
		return
	}
	if resp.StatusCode != http.StatusOK || review.Response == nil || !review.Response.Allowed || len(review.Response.Patch) == 0 {
		res.err = fmt.Errorf("HTTP %d, response %+v: want 200, allowed, with a patch", resp.StatusCode, review.Response)
	}
}
