// Package cluster runs a real Kubernetes control plane (etcd, kube-apiserver,
// kube-controller-manager built from source by test/controlplane) on 127.0.0.1
// for the control-plane test tier and `make demo`, and runs the pmem webhook
// against it.
//
// Everything listens on loopback on free ports, lives in one temporary
// directory, and is stopped by Stop; processes that outlive their parent are
// killed by the kernel (see process).
package cluster

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/pmem-webhook/pmem-webhook/test/proc"
)

// Controllers run by kube-controller-manager: what turns Deployments,
// StatefulSets and CronJobs into pods, generic ephemeral volumes into
// `<pod>-pmem` PVCs, deletes those with their pod (garbage collector and
// PVC protection), gives namespaces their default service account, and
// cleans namespaces up. Node, scheduling and cloud controllers are left out:
// there are no nodes here.
var Controllers = []string{
	"deployment-controller",
	"replicaset-controller",
	"statefulset-controller",
	"cronjob-controller",
	"job-controller",
	"ephemeral-volume-controller",
	"garbage-collector-controller",
	"persistentvolumeclaim-protection-controller",
	"serviceaccount-controller",
	"serviceaccount-token-controller",
	"root-ca-certificate-publisher-controller",
	"namespace-controller",
}

// Options configure Start.
type Options struct {
	// BinDir holds etcd, kube-apiserver and kube-controller-manager;
	// "" means DefaultBinDir.
	BinDir string
	// Dir is the working directory (data, certs, logs); "" means a new
	// temporary directory, removed by Stop.
	Dir string
	// Timeout bounds the whole start-up; 0 means 2 minutes.
	Timeout time.Duration
	// Logf reports progress; nil discards it.
	Logf func(format string, args ...any)
	// ExtraAPIServerArgs are appended to kube-apiserver's flags, and
	// ExtraControllers to Controllers: what the kubelet e2e provider
	// (test/kubelet) needs to run pods on a node (endpoint routing for the
	// in-cluster webhook Service, the EndpointSlice controller, ...).
	ExtraAPIServerArgs []string
	ExtraControllers   []string
}

// ControlPlane is a running etcd + kube-apiserver + kube-controller-manager.
type ControlPlane struct {
	// Config is an admin (system:masters) client configuration.
	Config *rest.Config
	// KubeconfigFile holds the same credentials, for kubectl.
	KubeconfigFile string
	// Dir holds data, certificates and the logs <name>.log of each binary.
	Dir string
	// CAPEM is the CA that signed the apiserver's serving certificate and
	// the admin client certificate.
	CAPEM []byte
	// Files are the key material on disk, for further components (a
	// scheduler or kubelet started with StartProcess).
	Files Files

	removeDir bool
	procs     []*proc.Process // start order; stopped in reverse

	extraArgs        map[string][]string // by binary name, appended to its flags
	extraControllers []string
	stopOnce         sync.Once
}

// Start starts the control plane and returns once the apiserver is ready and
// the controller-manager has created the default service account of the
// "default" namespace. On error everything started so far is stopped.
func Start(ctx context.Context, opts Options) (cp *ControlPlane, err error) {
	bins, err := FindBinaries(opts.BinDir)
	if err != nil {
		return nil, err
	}
	if opts.Timeout == 0 {
		opts.Timeout = 2 * time.Minute
	}
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()

	cp = &ControlPlane{Dir: opts.Dir, extraControllers: opts.ExtraControllers,
		extraArgs: map[string][]string{BinAPIServer: opts.ExtraAPIServerArgs}}
	if cp.Dir == "" {
		if cp.Dir, err = os.MkdirTemp("", "pmem-controlplane-"); err != nil {
			return nil, fmt.Errorf("control-plane dir: %w", err)
		}
		cp.removeDir = true
	}
	// Not the named result: every error return sets that to nil.
	started := cp
	defer func() {
		if err != nil {
			started.Stop()
		}
	}()

	pki, err := newPKI(cp.Dir, 24*time.Hour)
	if err != nil {
		return nil, fmt.Errorf("control-plane certificates: %w", err)
	}
	cp.CAPEM = pki.CAPEM
	cp.Files = Files{
		CA: pki.CAFile, CAKey: pki.CAKeyFile,
		AdminCert: pki.AdminCertFile, AdminKey: pki.AdminKeyFile,
		ServiceAccountKey: pki.SAKeyFile, ServiceAccountPub: pki.SAPubFile,
	}

	start := time.Now()
	etcdURL, err := cp.startEtcd(ctx, bins.Etcd)
	if err != nil {
		return nil, err
	}
	logf("etcd ready at %s (%s)", etcdURL, time.Since(start).Round(time.Millisecond))

	start = time.Now()
	if err := cp.startAPIServer(ctx, bins.APIServer, etcdURL, pki); err != nil {
		return nil, err
	}
	logf("kube-apiserver ready at %s (%s)", cp.Config.Host, time.Since(start).Round(time.Millisecond))

	start = time.Now()
	if err := cp.startControllerManager(ctx, bins.ControllerManager, pki); err != nil {
		return nil, err
	}
	logf("kube-controller-manager ready (%s)", time.Since(start).Round(time.Millisecond))
	return cp, nil
}

// Stop stops the binaries in reverse start order and removes the working
// directory if Start created it. It is safe to call more than once.
func (cp *ControlPlane) Stop() {
	if cp == nil {
		return
	}
	cp.stopOnce.Do(func() {
		for i := len(cp.procs) - 1; i >= 0; i-- {
			cp.procs[i].Stop(10 * time.Second)
		}
		if cp.removeDir {
			_ = os.RemoveAll(cp.Dir)
		}
	})
}

// Files are paths inside ControlPlane.Dir.
type Files struct {
	CA, CAKey                            string
	AdminCert, AdminKey                  string
	ServiceAccountKey, ServiceAccountPub string
}

// StartProcess runs one more binary under the control plane's lifecycle:
// own process group, killed with the test binary, log in LogFile(name),
// stopped by Stop before the control plane (reverse start order). Readiness
// is the caller's business.
func (cp *ControlPlane) StartProcess(name, bin string, args ...string) error {
	_, err := cp.start(name, bin, args...)
	return err
}

// LogFile is the path of the log of one binary (BinEtcd, BinAPIServer, ...).
func (cp *ControlPlane) LogFile(name string) string {
	return filepath.Join(cp.Dir, name+".log")
}

func (cp *ControlPlane) start(name, bin string, args ...string) (*proc.Process, error) {
	p, err := proc.Start(name, bin, append(args, cp.extraArgs[name]...), cp.Dir, nil)
	if err != nil {
		return nil, err
	}
	cp.procs = append(cp.procs, p)
	return p, nil
}

func (cp *ControlPlane) startEtcd(ctx context.Context, bin string) (string, error) {
	clientPort, err := proc.FreePort()
	if err != nil {
		return "", err
	}
	peerPort, err := proc.FreePort()
	if err != nil {
		return "", err
	}
	clientURL := "http://127.0.0.1:" + strconv.Itoa(clientPort)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	p, err := cp.start(BinEtcd, bin,
		"--name=default",
		"--data-dir="+filepath.Join(cp.Dir, "etcd"),
		"--listen-client-urls="+clientURL,
		"--advertise-client-urls="+clientURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=default="+peerURL,
		// Throw-away data: durability only costs time here.
		"--unsafe-no-fsync=true",
		"--log-level=warn",
	)
	if err != nil {
		return "", err
	}
	client := &http.Client{Timeout: 2 * time.Second}
	err = p.WaitFor(ctx, 100*time.Millisecond, func(ctx context.Context) error {
		body, err := proc.Get(ctx, client, clientURL+"/health")
		if err != nil {
			return err
		}
		if !strings.Contains(body, `"health":"true"`) {
			return fmt.Errorf("etcd /health: %s", body)
		}
		return nil
	})
	return clientURL, err
}

func (cp *ControlPlane) startAPIServer(ctx context.Context, bin, etcdURL string, pki *pki) error {
	port, err := proc.FreePort()
	if err != nil {
		return err
	}
	p, err := cp.start(BinAPIServer, bin,
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		// The endpoint reconciler refuses a loopback address for the
		// kubernetes Service; nothing in-cluster needs that Service here.
		"--endpoint-reconciler-type=none",
		"--secure-port="+strconv.Itoa(port),
		"--cert-dir="+filepath.Join(cp.Dir, "apiserver"),
		"--tls-cert-file="+pki.ServingCertFile,
		"--tls-private-key-file="+pki.ServingKeyFile,
		"--client-ca-file="+pki.CAFile,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+pki.SAPubFile,
		"--service-account-signing-key-file="+pki.SAKeyFile,
		"--service-cluster-ip-range=10.0.0.0/24",
		"--authorization-mode=RBAC",
		"--allow-privileged=true",
		// The defaults already include these; naming them documents what
		// the tests rely on: the webhook is called, and PodSecurity judges
		// the mutated pod.
		"--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,PodSecurity,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,StorageObjectInUseProtection",
		"--profiling=false",
	)
	if err != nil {
		return err
	}
	cp.Config = &rest.Config{
		Host: "https://127.0.0.1:" + strconv.Itoa(port),
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   pki.CAPEM,
			CertData: pki.AdminCertPEM,
			KeyData:  pki.AdminKeyPEM,
		},
		QPS:   100,
		Burst: 200,
	}
	if cp.KubeconfigFile, err = writeKubeconfig(filepath.Join(cp.Dir, "admin.kubeconfig"), cp.Config); err != nil {
		return err
	}
	client, err := httpClient(cp.Config)
	if err != nil {
		return err
	}
	return p.WaitFor(ctx, 200*time.Millisecond, func(ctx context.Context) error {
		body, err := proc.Get(ctx, client, cp.Config.Host+"/readyz")
		if err != nil {
			return err
		}
		if body != "ok" {
			return fmt.Errorf("/readyz: %s", body)
		}
		return nil
	})
}

func (cp *ControlPlane) startControllerManager(ctx context.Context, bin string, pki *pki) error {
	port, err := proc.FreePort()
	if err != nil {
		return err
	}
	p, err := cp.start(BinControllerManager, bin,
		"--kubeconfig="+cp.KubeconfigFile,
		"--authentication-kubeconfig="+cp.KubeconfigFile,
		"--authorization-kubeconfig="+cp.KubeconfigFile,
		"--bind-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(port),
		"--cert-dir="+filepath.Join(cp.Dir, "controller-manager"),
		"--leader-elect=false",
		"--controllers="+strings.Join(append(append([]string{}, Controllers...), cp.extraControllers...), ","),
		"--root-ca-file="+pki.CAFile,
		"--service-account-private-key-file="+pki.SAKeyFile,
		"--profiling=false",
	)
	if err != nil {
		return err
	}
	insecure := proc.LoopbackProbeClient()
	healthURL := "https://127.0.0.1:" + strconv.Itoa(port) + "/healthz"
	if err := p.WaitFor(ctx, 200*time.Millisecond, func(ctx context.Context) error {
		body, err := proc.Get(ctx, insecure, healthURL)
		if err != nil {
			return err
		}
		if body != "ok" {
			return fmt.Errorf("/healthz: %s", body)
		}
		return nil
	}); err != nil {
		return err
	}
	// Healthy is not yet working: the first default service account proves
	// the controllers have synced their informers and act.
	cs, err := kubernetes.NewForConfig(cp.Config)
	if err != nil {
		return err
	}
	return p.WaitFor(ctx, 200*time.Millisecond, func(ctx context.Context) error {
		_, err := cs.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
		return err
	})
}

// WaitForDefaultServiceAccount waits until the controller-manager has created
// the "default" service account in ns: the ServiceAccount admission plugin
// refuses pods in a namespace that lacks it.
func WaitForDefaultServiceAccount(ctx context.Context, cfg *rest.Config, ns string, timeout time.Duration) error {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		_, err := cs.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		if err == nil {
			return nil
		}
		if !apierrors.IsNotFound(err) && ctx.Err() == nil {
			return fmt.Errorf("get service account %s/default: %w", ns, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("service account %s/default not created within %s: %w", ns, timeout, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func httpClient(cfg *rest.Config) (*http.Client, error) {
	tlsCfg, err := rest.TLSConfigFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("TLS config: %w", err)
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}, nil
}

func writeKubeconfig(path string, cfg *rest.Config) (string, error) {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["pmem"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData}
	kc.Contexts["pmem"] = &clientcmdapi.Context{Cluster: "pmem", AuthInfo: "admin"}
	kc.CurrentContext = "pmem"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return "", fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return path, nil
}
