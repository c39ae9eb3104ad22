package redischeck

import (
	"strings"
	"sync"
	"testing"
	"time"
)

// Writer is the bounded write load: SETs of self-describing values with
// increasing versions, pipelined, until stopped, maxOps or its deadline.
// OK, Errs and ErrKinds are for reading after Stop.
type Writer struct {
	mu       sync.Mutex
	sent     []int // highest version sent per key
	OK, Errs int
	ErrKinds map[string]int
	stop     chan struct{}
	done     chan error
}

// StartWriter starts the load on keys 0..keys-1 of size bytes.
func StartWriter(t testing.TB, port, keys, size, maxOps int, limit time.Duration) *Writer {
	t.Helper()
	c, err := Dial(port)
	if err != nil {
		t.Fatal(err)
	}
	w := &Writer{sent: make([]int, keys), ErrKinds: map[string]int{}, stop: make(chan struct{}), done: make(chan error, 1)}
	go func() {
		defer c.Close()
		deadline := time.Now().Add(limit)
		const batch = 20
		for op := 0; op < maxOps && time.Now().Before(deadline); op += batch {
			select {
			case <-w.stop:
				w.done <- nil
				return
			default:
			}
			w.mu.Lock()
			for b := 0; b < batch; b++ {
				k := (op + b) % keys
				w.sent[k]++
				c.Send("SET", KeyName(k), Value(KeyName(k), w.sent[k], size))
			}
			w.mu.Unlock()
			if err := c.Flush(); err != nil {
				w.done <- err
				return
			}
			for b := 0; b < batch; b++ {
				r, err := c.Receive()
				if err != nil {
					w.done <- err
					return
				}
				w.mu.Lock()
				if e, ok := r.(Error); ok {
					w.Errs++
					w.ErrKinds[strings.Fields(string(e))[0]]++
				} else {
					w.OK++
				}
				w.mu.Unlock()
			}
		}
		w.done <- nil
	}()
	return w
}

// Stop stops the load and waits for it (30 s at most).
func (w *Writer) Stop(t testing.TB) {
	t.Helper()
	close(w.stop)
	select {
	case err := <-w.done:
		if err != nil {
			t.Errorf("write load: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("write load did not stop in 30s")
	}
}

// Snapshot returns the highest version sent per key so far.
func (w *Writer) Snapshot() []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]int(nil), w.sent...)
}
