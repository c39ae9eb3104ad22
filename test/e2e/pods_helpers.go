package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/pmem-webhook/pmem-webhook/cmd/pmem-inject/plugin"
	"github.com/pmem-webhook/pmem-webhook/test/smaps"
)

// PodEnv is what a provider that runs pods (kubelet, kind) adds for the pod features.
type PodEnv struct {
	// RedisImage runs Debian's redis-server (deploy/images/redis-debian).
	RedisImage string
	// WebhookNamespace and WebhookDeployment locate the webhook installed from deploy/.
	WebhookNamespace, WebhookDeployment string
	// ContainerRootIsRO, when the provider can look at the runtime, reports whether the
	// container (by status containerID) really ran with a read-only root filesystem, and as
	// which uid. nil: not available (kind).
	ContainerRootIsRO func(ctx context.Context, containerID string) (readOnly bool, uid uint32, err error)
}

// Bounds for pods that really run: image already on the node, but init container, volume
// binding and readiness probes take their seconds, on two loaded cores.
const (
	podTimeout   = 3 * time.Minute
	redisTimeout = 3 * time.Minute
)

// debianRedis is a Redis container of the Debian image, as deploy/examples/redis-pmem.yaml
// runs it: a cache (no RDB or AOF), a readiness probe on the port.
func debianRedis(penv *PodEnv, memory string) corev1.Container {
	return corev1.Container{
		Name:            "redis",
		Image:           penv.RedisImage,
		ImagePullPolicy: corev1.PullNever,
		Command:         []string{"redis-server"},
		Args:            []string{"--save", "", "--appendonly", "no", "--protected-mode", "no"},
		Ports:           []corev1.ContainerPort{{Name: "redis", ContainerPort: 6379}},
		ReadinessProbe: &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromString("redis")}},
			PeriodSeconds: 2,
		},
		Resources: corev1.ResourceRequirements{
			Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse(memory)},
		},
	}
}

// waitDeploymentRolledOut waits until the Deployment's newest ReplicaSet has every replica
// ready and no old pod is left, and returns its pods.
func waitDeploymentRolledOut(ctx context.Context, t *testing.T, c client.Client, ns, name string, timeout time.Duration) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	waitFor(ctx, t, timeout, "Deployment "+ns+"/"+name+" rolled out and Ready", func(ctx context.Context) (bool, error) {
		var d appsv1.Deployment
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &d); err != nil {
			return false, err
		}
		want := *d.Spec.Replicas
		st := d.Status
		if st.ObservedGeneration < d.Generation || st.UpdatedReplicas != want || st.ReadyReplicas != want ||
			st.AvailableReplicas != want || st.Replicas != want {
			return false, fmt.Errorf("status %+v, want %d updated/ready/available", st, want)
		}
		all, err := podsWith(ctx, c, ns, d.Spec.Selector.MatchLabels)
		if err != nil {
			return false, err
		}
		pods = pods[:0]
		for _, p := range all {
			if p.DeletionTimestamp != nil {
				return false, fmt.Errorf("pod %s still terminating", p.Name)
			}
			pods = append(pods, p)
		}
		return len(pods) == int(want), nil
	})
	return pods
}

// execIn runs cmd in a container through the apiserver (kubelet exec), returning stdout; the
// plugin's Exec, so the tests exercise the code `kubectl pmem status` uses.
func execIn(ctx context.Context, cfg *rest.Config, pod *corev1.Pod, container string, cmd ...string) (string, error) {
	out, err := plugin.Exec(ctx, cfg, pod, container, time.Minute, cmd...)
	if err != nil {
		return out, fmt.Errorf("exec %q in %s/%s: %w", cmd, pod.Name, container, err)
	}
	return out, nil
}

// podLogs returns a container's log through the apiserver (kubelet).
func podLogs(ctx context.Context, cfg *rest.Config, pod *corev1.Pod, container string) (string, error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "", err
	}
	b, err := cs.CoreV1().Pods(pod.Namespace).GetLogs(pod.Name, &corev1.PodLogOptions{Container: container}).DoRaw(ctx)
	return string(b), err
}

// portForward forwards a local loopback port to port of pod through the apiserver, until
// the returned stop is called.
func portForward(ctx context.Context, cfg *rest.Config, pod *corev1.Pod, port int) (local int, stop func(), err error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return 0, nil, err
	}
	transport, upgrader, err := spdy.RoundTripperFor(cfg)
	if err != nil {
		return 0, nil, err
	}
	url := cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(pod.Namespace).Name(pod.Name).SubResource("portforward").URL()
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, url)
	stopCh, readyCh := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{"0:" + strconv.Itoa(port)}, stopCh, readyCh, io.Discard, io.Discard)
	if err != nil {
		return 0, nil, err
	}
	errCh := make(chan error, 1)
	go func() { errCh <- fw.ForwardPorts() }()
	select {
	case <-readyCh:
	case err := <-errCh:
		return 0, nil, fmt.Errorf("port-forward to %s: %w", pod.Name, err)
	case <-time.After(30 * time.Second):
		close(stopCh)
		return 0, nil, fmt.Errorf("port-forward to %s not ready within 30s", pod.Name)
	case <-ctx.Done():
		close(stopCh)
		return 0, nil, ctx.Err()
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) != 1 {
		close(stopCh)
		return 0, nil, fmt.Errorf("port-forward ports %v: %v", ports, err)
	}
	return int(ports[0].Local), func() { close(stopCh) }, nil
}

// redisConn is a minimal RESP client: enough for SET, GET, DEL and PING.
type redisConn struct {
	c net.Conn
	r *bufio.Reader
	w *bufio.Writer
}

func dialRedis(addr string, deadline time.Time) (*redisConn, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(deadline)
	return &redisConn{c: c, r: bufio.NewReaderSize(c, 1<<20), w: bufio.NewWriterSize(c, 1<<20)}, nil
}

func (r *redisConn) Close() error { return r.c.Close() }

// do sends one command and reads its reply: a bulk string (nil for a null bulk), a simple
// string or an integer as text; a RESP error is returned as an error.
func (r *redisConn) do(args ...[]byte) ([]byte, error) {
	fmt.Fprintf(r.w, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(r.w, "$%d\r\n", len(a))
		r.w.Write(a)
		r.w.WriteString("\r\n")
	}
	if err := r.w.Flush(); err != nil {
		return nil, err
	}
	line, err := r.r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return nil, fmt.Errorf("empty RESP reply")
	}
	switch line[0] {
	case '+', ':':
		return []byte(line[1:]), nil
	case '-':
		return nil, fmt.Errorf("redis: %s", line[1:])
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return nil, fmt.Errorf("bad bulk length %q", line)
		}
		if n < 0 {
			return nil, nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r.r, buf); err != nil {
			return nil, err
		}
		return buf[:n], nil
	default:
		return nil, fmt.Errorf("unsupported RESP reply %q", line)
	}
}

// pmemRss sums the resident size of the mappings of pid whose file is under /mnt/pmem (the
// FS_DAX heap is a file memkind creates there), from /proc/<pid>/smaps inside the container.
func pmemRss(ctx context.Context, cfg *rest.Config, pod *corev1.Pod, container, pid string) (rssKiB int64, mappings []string, err error) {
	out, err := execIn(ctx, cfg, pod, container, "cat", "/proc/"+pid+"/smaps")
	if err != nil {
		return 0, nil, err
	}
	u, err := smaps.Parse(out, "/mnt/pmem/")
	return u.RSSKB, u.Mappings, err
}
