package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/pmem-webhook/pmem-webhook/patch"
	"github.com/pmem-webhook/pmem-webhook/webhook"
)

// handledSink is a logr.LogSink that records the uid of every review the
// admission handler logged a decision for ("injected", "skipped", "denied":
// what test/reliability's Handled reads from the process log).
type handledSink struct {
	mu   *sync.Mutex
	uids map[string]bool
	kv   []any
}

func (s *handledSink) Init(logr.RuntimeInfo)        {}
func (s *handledSink) Enabled(int) bool             { return true }
func (s *handledSink) Error(error, string, ...any)  {}
func (s *handledSink) WithName(string) logr.LogSink { return s }
func (s *handledSink) WithValues(kv ...any) logr.LogSink {
	c := *s
	c.kv = append(append([]any{}, s.kv...), kv...)
	return &c
}
func (s *handledSink) Info(_ int, msg string, kv ...any) {
	switch msg {
	case "injected", "skipped", "denied":
	default:
		return
	}
	all := append(append([]any{}, s.kv...), kv...)
	for i := 0; i+1 < len(all); i += 2 {
		if all[i] == "uid" {
			s.mu.Lock()
			s.uids[fmt.Sprint(all[i+1])] = true
			s.mu.Unlock()
		}
	}
}

// TestNoHandledAdmissionLostInShutdown drives keep-alive admissions from
// several clients into Run and cancels it at a random moment, many times,
// with and without a shutdown delay. The invariant is the one
// TestGracefulShutdownUnderLoad (test/reliability) checks through an
// apiserver: a review the handler decided on is answered. Requests that fail
// without reaching the handler are counted and logged, not failed: a request
// written on a keep-alive connection at the instant the server closes it is
// lost before the handler, which HTTP/1.1 cannot prevent (the client must
// retry). Nothing here measures time.
func TestNoHandledAdmissionLostInShutdown(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Run many times")
	}
	dir, b := certDir(t)
	raw, err := os.ReadFile(filepath.Join("..", "webhook", "testdata", "review-redis-single.json"))
	if err != nil {
		t.Fatal(err)
	}
	var review map[string]any
	if err := json.Unmarshal(raw, &review); err != nil {
		t.Fatal(err)
	}
	const iterations, clients = 60, 8
	var handledLost, unhandledFailed, answered int
	for it := range iterations {
		sink := &handledSink{mu: &sync.Mutex{}, uids: map[string]bool{}}
		cfg := patch.DefaultConfig()
		delay := time.Duration(0)
		if it%2 == 1 {
			delay = 20 * time.Millisecond
		}
		srv, err := New(Options{BindAddress: "127.0.0.1", CertDir: dir, Config: &cfg, Log: logr.New(sink), ShutdownDelay: delay, ShutdownTimeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		cancel, done := runReady(t, srv)

		var (
			mu      sync.Mutex
			ok      = map[string]bool{}
			failed  = map[string]error{}
			stop    atomic.Bool
			wg      sync.WaitGroup
			counter atomic.Int64
		)
		url := "https://" + srv.WebhookAddr() + webhook.Path
		for c := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				client := tlsClient(b.CAPEM)
				defer client.CloseIdleConnections()
				for !stop.Load() {
					uid := fmt.Sprintf("it%d-c%d-%d", it, c, counter.Add(1))
					r := map[string]any{}
					for k, v := range review["request"].(map[string]any) {
						r[k] = v
					}
					r["uid"] = uid
					body, _ := json.Marshal(map[string]any{"apiVersion": review["apiVersion"], "kind": review["kind"], "request": r})
					resp, err := client.Post(url, "application/json", bytes.NewReader(body))
					if err == nil {
						_, err = io.ReadAll(resp.Body)
						resp.Body.Close()
						if err == nil && resp.StatusCode != http.StatusOK {
							err = fmt.Errorf("HTTP %d", resp.StatusCode)
						}
					}
					mu.Lock()
					if err == nil {
						ok[uid] = true
					} else {
						failed[uid] = err
					}
					mu.Unlock()
				}
			}()
		}
		// Cancel after a random number of answered requests, so that
		// shutdown lands at a different point of the request cycle each
		// time.
		target := 20 + rand.IntN(200)
		for {
			mu.Lock()
			n := len(ok) + len(failed)
			mu.Unlock()
			if n >= target {
				break
			}
			time.Sleep(time.Millisecond)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("iteration %d: Run: %v", it, err)
		}
		stop.Store(true)
		wg.Wait()
		sink.mu.Lock()
		for uid, err := range failed {
			if sink.uids[uid] {
				handledLost++
				t.Errorf("iteration %d: review %s handled by the webhook, yet the client got: %v", it, uid, err)
			} else {
				unhandledFailed++
			}
		}
		sink.mu.Unlock()
		answered += len(ok)
	}
	t.Logf("%d iterations: %d answered, %d handled but lost (must be 0), %d failed before reaching the handler (after the listener closed, or a request written as its idle connection was closed)",
		iterations, answered, handledLost, unhandledFailed)
}
