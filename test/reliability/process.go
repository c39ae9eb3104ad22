package reliability

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pmem-webhook/pmem-webhook/certs"
	"github.com/pmem-webhook/pmem-webhook/test/proc"
)

// WebhookProcess is the pmem-webhook binary running on loopback with a serving
// certificate from certs.Generate in its own cert dir.
type WebhookProcess struct {
	// URL is https://127.0.0.1:<port>; Addr is 127.0.0.1:<port>.
	URL, Addr string
	// HealthURL is .../readyz, MetricsURL .../metrics.
	HealthURL, MetricsURL string
	// CertDir is --cert-dir; Bundle is what was written there first (its CA
	// is the caBundle to register; Renew issues the next certificate).
	CertDir string
	Bundle  *certs.Bundle
	// LogPath receives the process's stderr (JSON log lines).
	LogPath string

	layout  CertLayout
	probeMu sync.Mutex
	probes  map[int]bool // local ports of ServedSerial's own connections
	process *proc.Process
}

// ServingIPs are the SANs of every serving certificate here.
var ServingIPs = []net.IP{net.IPv4(127, 0, 0, 1)}

// CertLayout is how the serving certificate sits in --cert-dir.
type CertLayout int

const (
	// LayoutFiles: plain files, each replaced by rename (certs.WriteDir).
	LayoutFiles CertLayout = iota
	// LayoutSecretVolume: what the kubelet makes of a Secret volume (its
	// AtomicWriter): tls.crt -> ..data/tls.crt, ..data -> ..<timestamp>/,
	// and an update is a new timestamped directory plus one rename of
	// ..data. The files the server watches are never written; the
	// symlink they resolve through moves.
	LayoutSecretVolume
)

// StartWebhookProcess starts bin with deploy/default's injection flags, the
// loopback listeners and extra flags (later flags win), and waits until
// /readyz answers. The process is killed with the test binary (Pdeathsig) and
// stopped by t.Cleanup.
func StartWebhookProcess(ctx context.Context, bin, dir string, extra ...string) (*WebhookProcess, error) {
	return StartWebhookProcessLayout(ctx, bin, dir, LayoutFiles, extra...)
}

// StartWebhookProcessLayout is StartWebhookProcess with the cert dir in the
// given layout.
func StartWebhookProcessLayout(ctx context.Context, bin, dir string, layout CertLayout, extra ...string) (*WebhookProcess, error) {
	args, err := DeployedArgs()
	if err != nil {
		return nil, err
	}
	bundle, err := certs.Generate(nil, ServingIPs, 24*time.Hour)
	if err != nil {
		return nil, err
	}
	certDir := filepath.Join(dir, "certs")
	if err := writeCerts(certDir, layout, bundle); err != nil {
		return nil, err
	}
	ports, err := proc.FreePorts(3)
	if err != nil {
		return nil, err
	}
	w := &WebhookProcess{
		Addr:       "127.0.0.1:" + strconv.Itoa(ports[0]),
		HealthURL:  "http://127.0.0.1:" + strconv.Itoa(ports[1]) + "/readyz",
		MetricsURL: "http://127.0.0.1:" + strconv.Itoa(ports[2]) + "/metrics",
		CertDir:    certDir,
		Bundle:     bundle,
		layout:     layout,
	}
	w.URL = "https://" + w.Addr
	args = append(args,
		"--bind-address=127.0.0.1",
		"--port="+strconv.Itoa(ports[0]),
		"--health-addr=127.0.0.1:"+strconv.Itoa(ports[1]),
		"--metrics-addr=127.0.0.1:"+strconv.Itoa(ports[2]),
		"--cert-dir="+certDir,
	)
	args = append(args, extra...)
	// Its own process group, killed with the test binary (Pdeathsig): see
	// proc.Process.
	if w.process, err = proc.Start("webhook", bin, args, dir, nil); err != nil {
		return nil, err
	}
	w.LogPath = w.process.LogPath
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	if err := w.process.WaitFor(ctx, 50*time.Millisecond, func(ctx context.Context) error {
		_, err := proc.Get(ctx, client, w.HealthURL)
		return err
	}); err != nil {
		w.Kill()
		return nil, err
	}
	return w, nil
}

// PID of the process.
func (w *WebhookProcess) PID() int { return w.process.Cmd.Process.Pid }

// Signal sends sig to the process (not its group: what the kubelet's
// container runtime does to PID 1).
func (w *WebhookProcess) Signal(sig syscall.Signal) error { return w.process.Cmd.Process.Signal(sig) }

// Wait waits for the process to exit, at most timeout, and returns its exit
// error (nil for status 0).
func (w *WebhookProcess) Wait(timeout time.Duration) (exited bool, err error) {
	return w.process.Wait(timeout)
}

// Stop sends SIGTERM, waits up to 20 s, then SIGKILLs. Safe to call twice.
func (w *WebhookProcess) Stop() { w.process.Stop(20 * time.Second) }

// Kill SIGKILLs the process group at once.
func (w *WebhookProcess) Kill() { w.process.Kill() }

// Tail is the end of the webhook's log, for failure messages.
func (w *WebhookProcess) Tail(n int64) string { return w.process.Tail(n) }

// Rotate issues a new serving certificate from the same CA and writes it
// into the cert dir (atomically per file, as cert-manager's Secret update
// reaches a mount). It returns the new certificate's serial.
func (w *WebhookProcess) Rotate() (*big.Int, error) {
	next, err := w.Bundle.Renew(nil, ServingIPs, 24*time.Hour)
	if err != nil {
		return nil, err
	}
	if err := writeCerts(w.CertDir, w.layout, next); err != nil {
		return nil, err
	}
	return serialOf(next.CertPEM)
}

func writeCerts(dir string, layout CertLayout, b *certs.Bundle) error {
	if layout == LayoutFiles {
		return b.WriteDir(dir)
	}
	return writeSecretVolume(dir, map[string][]byte{certs.CAFile: b.CAPEM, certs.CertFile: b.CertPEM, certs.KeyFile: b.KeyPEM})
}

// writeSecretVolume updates dir the way the kubelet's AtomicWriter updates
// a Secret volume.
func writeSecretVolume(dir string, files map[string][]byte) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	dataLink := filepath.Join(dir, "..data")
	old, _ := os.Readlink(dataLink)
	ts, err := os.MkdirTemp(dir, time.Now().UTC().Format("..2006_01_02_15_04_05."))
	if err != nil {
		return err
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(ts, name), data, 0o644); err != nil {
			return err
		}
	}
	tmpLink := filepath.Join(dir, "..data_tmp")
	_ = os.Remove(tmpLink)
	if err := os.Symlink(filepath.Base(ts), tmpLink); err != nil {
		return err
	}
	if err := os.Rename(tmpLink, dataLink); err != nil {
		return fmt.Errorf("swap ..data: %w", err)
	}
	for name := range files {
		link := filepath.Join(dir, name)
		if _, err := os.Lstat(link); os.IsNotExist(err) {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				return err
			}
		}
	}
	if old != "" {
		return os.RemoveAll(filepath.Join(dir, old))
	}
	return nil
}

// ServedSerial dials the webhook port and returns the serial of the leaf
// certificate it presents, verified against the CA.
func (w *WebhookProcess) ServedSerial() (*big.Int, error) {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(w.Bundle.CAPEM)
	d := &net.Dialer{Timeout: 2 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", w.Addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	w.probeMu.Lock()
	if w.probes == nil {
		w.probes = map[int]bool{}
	}
	w.probes[conn.LocalAddr().(*net.TCPAddr).Port] = true
	w.probeMu.Unlock()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber, nil
}

// IsProbe reports whether a client port belonged to ServedSerial.
func (w *WebhookProcess) IsProbe(port int) bool {
	w.probeMu.Lock()
	defer w.probeMu.Unlock()
	return w.probes[port]
}

// Port is the webhook's TCP port.
func (w *WebhookProcess) Port() int {
	_, p, _ := net.SplitHostPort(w.Addr)
	n, _ := strconv.Atoi(p)
	return n
}

// ClientPorts lists the remote ports of the established IPv4 TCP
// connections to local port (from /proc/net/tcp): who is connected to the
// webhook right now.
func ClientPorts(port int) ([]int, error) {
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return nil, err
	}
	var out []int
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 4 || f[3] != "01" { // ESTABLISHED
			continue
		}
		_, lp, _ := strings.Cut(f[1], ":")
		_, rp, _ := strings.Cut(f[2], ":")
		l, err1 := strconv.ParseInt(lp, 16, 32)
		r, err2 := strconv.ParseInt(rp, 16, 32)
		if err1 == nil && err2 == nil && int(l) == port {
			out = append(out, int(r))
		}
	}
	return out, nil
}

// Memory is the process's resident set from /proc/PID/status: VmRSS now and
// VmHWM, the kernel's own peak.
type Memory struct{ RSS, Peak int64 } // bytes

// ReadMemory reads /proc/PID/status.
func ReadMemory(pid int) (Memory, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Memory{}, err
	}
	defer f.Close()
	var m Memory
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) != 3 || fields[2] != "kB" {
			continue
		}
		kb, err := strconv.ParseInt(fields[1], 10, 64)
		if err != nil {
			continue
		}
		switch fields[0] {
		case "VmRSS:":
			m.RSS = kb << 10
		case "VmHWM:":
			m.Peak = kb << 10
		}
	}
	if m.RSS == 0 {
		return m, fmt.Errorf("/proc/%d/status has no VmRSS", pid)
	}
	return m, s.Err()
}

// CPUTime is the user+system CPU time the process has used so far
// (/proc/PID/stat fields 14 and 15, in clock ticks of 10 ms).
func CPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after "(comm)", which may contain spaces: state is field 3.
	rest := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(rest) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	utime, err1 := strconv.ParseInt(rest[11], 10, 64)
	stime, err2 := strconv.ParseInt(rest[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: utime %q stime %q", pid, rest[11], rest[12])
	}
	// USER_HZ is 100 on every Linux architecture Go supports.
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

// MachineCPU is the busy and total time of all CPUs from /proc/stat, in
// clock ticks: what else on the machine competed with the webhook.
type MachineCPU struct{ Busy, Total int64 }

// ReadMachineCPU reads the aggregate "cpu" line of /proc/stat.
func ReadMachineCPU() (MachineCPU, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return MachineCPU{}, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	fields := strings.Fields(line)
	if len(fields) < 8 || fields[0] != "cpu" {
		return MachineCPU{}, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var m MachineCPU
	for i, f := range fields[1:] {
		v, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return MachineCPU{}, fmt.Errorf("/proc/stat: %q: %w", f, err)
		}
		m.Total += v
		if i != 3 && i != 4 { // idle, iowait
			m.Busy += v
		}
	}
	return m, nil
}

// LogLine is one JSON line of the webhook's log.
type LogLine struct {
	Time      time.Time `json:"time"`
	Msg       string    `json:"msg"`
	Namespace string    `json:"namespace"`
	Pod       string    `json:"pod"`
}

// Log parses the process's JSON log.
func (w *WebhookProcess) Log() ([]LogLine, error) {
	f, err := os.Open(w.LogPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []LogLine
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		var l LogLine
		if json.Unmarshal(s.Bytes(), &l) == nil {
			out = append(out, l)
		}
	}
	return out, s.Err()
}

// Handled is what the webhook's log says about one pod: how many
// admission calls for it the handler decided ("injected", "skipped",
// "denied"; "skipped" is logged only with --v=1) and when the last was.
type Handled struct {
	Calls int
	Last  time.Time
}

// Handled maps the pods the webhook answered for to their Handled, from
// its log. The apiserver can call the webhook more than once per pod
// (reinvocationPolicy IfNeeded: again when an admission plugin changed the
// pod after the webhook's patch), so one pod can have several calls.
func (w *WebhookProcess) Handled() (map[string]Handled, error) {
	lines, err := w.Log()
	if err != nil {
		return nil, err
	}
	out := map[string]Handled{}
	for _, l := range lines {
		switch l.Msg {
		case "injected", "skipped", "denied":
			h := out[l.Pod]
			h.Calls++
			h.Last = l.Time
			out[l.Pod] = h
		}
	}
	return out, nil
}

func serialOf(certPEM []byte) (*big.Int, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil {
		return nil, fmt.Errorf("no PEM certificate")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, err
	}
	return c.SerialNumber, nil
}

// ConnSampler records when each client connection to a port was first seen
// established (polling /proc/net/tcp every 20 ms, so connections shorter
// than that can be missed: the counts are lower bounds).
type ConnSampler struct {
	mu        sync.Mutex
	firstSeen map[int]time.Time
	stop      chan struct{}
	done      chan struct{}
}

// SampleConns starts sampling connections to port.
func SampleConns(port int) *ConnSampler {
	c := &ConnSampler{firstSeen: map[int]time.Time{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for {
			ports, _ := ClientPorts(port)
			now := time.Now()
			c.mu.Lock()
			for _, p := range ports {
				if _, ok := c.firstSeen[p]; !ok {
					c.firstSeen[p] = now
				}
			}
			c.mu.Unlock()
			select {
			case <-c.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return c
}

// Stop ends sampling and returns client port -> first seen.
func (c *ConnSampler) Stop() map[int]time.Time {
	close(c.stop)
	<-c.done
	return c.firstSeen
}
