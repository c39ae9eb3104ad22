package bootstrap_test

// Tests against a real kube-apiserver (test/cluster): the objects and RBAC
// come from the Helm chart's selfSigned rendering, the bootstrappers run as
// the chart's ServiceAccount, so what is tested is what a cluster gets.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/pmem-webhook/pmem-webhook/certs"
	"github.com/pmem-webhook/pmem-webhook/certs/bootstrap"
	"github.com/pmem-webhook/pmem-webhook/deploy"
	"github.com/pmem-webhook/pmem-webhook/patch"
	"github.com/pmem-webhook/pmem-webhook/server"
	"github.com/pmem-webhook/pmem-webhook/test/cluster"
	"github.com/pmem-webhook/pmem-webhook/test/proc"
)

var (
	cpOnce sync.Once
	cp     *cluster.ControlPlane
	cpErr  error
)

func TestMain(m *testing.M) {
	// The webhook server's certwatcher logs through controller-runtime.
	ctrllog.SetLogger(logr.Discard())
	code := m.Run()
	cp.Stop() // nil-safe
	os.Exit(code)
}

// controlPlane starts one control plane for the package, or skips when the
// binaries are not built (unless PMEM_E2E_REQUIRE is set).
func controlPlane(t *testing.T) *cluster.ControlPlane {
	t.Helper()
	cluster.RequireBinaries(t, "test-selfsigned")
	cpOnce.Do(func() { cp, cpErr = cluster.Start(context.Background(), cluster.Options{}) })
	if cpErr != nil {
		t.Fatal(cpErr)
	}
	return cp
}

// install is one Helm release in certs.mode=selfSigned.
type install struct {
	ns, release string
	admin       kubernetes.Interface
	// sa is the webhook's ServiceAccount: what the bootstrapper runs as.
	sa *rest.Config
	// opts come from the rendered Deployment's args.
	opts bootstrap.Options
}

func newInstall(t *testing.T) *install {
	t.Helper()
	cp := controlPlane(t)
	ctx := context.Background()
	admin, err := kubernetes.NewForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "selfsigned-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	in := &install{ns: ns.Name, release: "pmem-" + rand.String(6), admin: admin}
	manifests, err := deploy.RenderHelm(in.release, in.ns, deploy.SelfSignedValues())
	if err != nil {
		t.Fatal(err)
	}
	objs, err := deploy.Objects(manifests)
	if err != nil {
		t.Fatal(err)
	}
	var saName string
	for _, u := range objs {
		var err error
		switch u.GetKind() {
		case "ServiceAccount":
			var o corev1.ServiceAccount
			if err = deploy.DecodeStrict(u, &o); err == nil {
				saName = o.Name
				_, err = admin.CoreV1().ServiceAccounts(in.ns).Create(ctx, &o, metav1.CreateOptions{})
			}
		case "Secret":
			var o corev1.Secret
			if err = deploy.DecodeStrict(u, &o); err == nil {
				_, err = admin.CoreV1().Secrets(in.ns).Create(ctx, &o, metav1.CreateOptions{})
			}
		case "Role":
			var o rbacv1.Role
			if err = deploy.DecodeStrict(u, &o); err == nil {
				_, err = admin.RbacV1().Roles(in.ns).Create(ctx, &o, metav1.CreateOptions{})
			}
		case "RoleBinding":
			var o rbacv1.RoleBinding
			if err = deploy.DecodeStrict(u, &o); err == nil {
				_, err = admin.RbacV1().RoleBindings(in.ns).Create(ctx, &o, metav1.CreateOptions{})
			}
		case "ClusterRole":
			var o rbacv1.ClusterRole
			if err = deploy.DecodeStrict(u, &o); err == nil {
				_, err = admin.RbacV1().ClusterRoles().Create(ctx, &o, metav1.CreateOptions{})
				t.Cleanup(func() { _ = admin.RbacV1().ClusterRoles().Delete(ctx, o.Name, metav1.DeleteOptions{}) })
			}
		case "ClusterRoleBinding":
			var o rbacv1.ClusterRoleBinding
			if err = deploy.DecodeStrict(u, &o); err == nil {
				_, err = admin.RbacV1().ClusterRoleBindings().Create(ctx, &o, metav1.CreateOptions{})
				t.Cleanup(func() { _ = admin.RbacV1().ClusterRoleBindings().Delete(ctx, o.Name, metav1.DeleteOptions{}) })
			}
		case "MutatingWebhookConfiguration":
			var o admissionregistrationv1.MutatingWebhookConfiguration
			if err = deploy.DecodeStrict(u, &o); err == nil {
				_, err = admin.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, &o, metav1.CreateOptions{})
				t.Cleanup(func() {
					_ = admin.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(ctx, o.Name, metav1.DeleteOptions{})
				})
			}
		case "Deployment":
			in.opts = optionsFromArgs(t, u.Object)
		}
		if err != nil {
			t.Fatalf("create %s %s: %v", u.GetKind(), u.GetName(), err)
		}
	}
	t.Cleanup(func() { _ = admin.CoreV1().Namespaces().Delete(ctx, in.ns, metav1.DeleteOptions{}) })
	if saName == "" || in.opts.SecretName == "" {
		t.Fatalf("rendering lacks the ServiceAccount or the self-signed flags:\n%s", manifests)
	}
	tok, err := admin.CoreV1().ServiceAccounts(in.ns).CreateToken(ctx, saName, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	in.sa = &rest.Config{Host: cp.Config.Host, BearerToken: tok.Status.Token, TLSClientConfig: rest.TLSClientConfig{CAData: cp.CAPEM}}
	return in
}

// optionsFromArgs parses the self-signed flags of the rendered Deployment
// with the webhook's own flag definitions.
func optionsFromArgs(t *testing.T, deployment map[string]any) bootstrap.Options {
	t.Helper()
	spec := deployment["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
	container := spec["containers"].([]any)[0].(map[string]any)
	fs := flag.NewFlagSet("pmem-webhook", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f := bootstrap.Register(fs)
	var args []string
	for _, a := range container["args"].([]any) {
		name, _, _ := strings.Cut(strings.TrimLeft(a.(string), "-"), "=")
		if fs.Lookup(name) != nil {
			args = append(args, a.(string))
		}
	}
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	o, err := f.Load()
	if err != nil || o == nil {
		t.Fatalf("self-signed flags %v: %v, %v", args, o, err)
	}
	return *o
}

func (in *install) secret(t *testing.T) *corev1.Secret {
	t.Helper()
	s, err := in.admin.CoreV1().Secrets(in.ns).Get(context.Background(), in.opts.SecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (in *install) config(t *testing.T) *admissionregistrationv1.MutatingWebhookConfiguration {
	t.Helper()
	c, err := in.admin.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(context.Background(), in.opts.WebhookConfigName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// replica is one bootstrapper with its own cert dir and log.
type replica struct {
	b   *bootstrap.Bootstrapper
	dir string
	log *syncBuffer
}

func (in *install) replica(t *testing.T, tweak func(*bootstrap.Options)) *replica {
	t.Helper()
	r := &replica{dir: t.TempDir(), log: &syncBuffer{}}
	o := in.opts
	o.CertDir = r.dir
	o.Log = funcr.New(func(prefix, args string) { r.log.printf("%s %s %s", time.Now().Format(time.StampMilli), prefix, args) }, funcr.Options{})
	if tweak != nil {
		tweak(&o)
	}
	var err error
	if r.b, err = bootstrap.New(in.sa, o); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log of replica %s:\n%s", r.dir, r.log.String())
		}
	})
	return r
}

// run runs the bootstrapper until the test ends.
func (r *replica) run(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func (r *replica) file(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(r.dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncBuffer) printf(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintf(&s.buf, format+"\n", args...)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func parseCerts(t *testing.T, p []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, p = pem.Decode(p)
		if b == nil {
			return out
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatalf("caBundle/secret holds an unparsable certificate: %v", err)
		}
		out = append(out, c)
	}
}

// verify checks that certPEM is a serving certificate for all the
// install's names that bundle trusts.
func (in *install) verify(certPEM, bundle []byte) error {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(bundle) {
		return fmt.Errorf("caBundle has no certificate: %q", bundle)
	}
	b, _ := pem.Decode(certPEM)
	if b == nil {
		return errors.New("no PEM certificate")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return err
	}
	for _, name := range in.opts.DNSNames() {
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool, DNSName: name}); err != nil {
			return fmt.Errorf("name %s: %w", name, err)
		}
	}
	return nil
}

// poll calls cond every 100ms until it returns nil or timeout passes.
func poll(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Replicas racing to fill the empty Secret end with one CA; every cert dir
// holds the certificate signed by it, and the caBundle trusts exactly it.
func TestRaceOnEmptySecret(t *testing.T) {
	for _, n := range []int{2, 4} {
		t.Run(fmt.Sprintf("%d replicas", n), func(t *testing.T) {
			in := newInstall(t)
			var replicas []*replica
			for range n {
				replicas = append(replicas, in.replica(t, nil))
			}
			start := make(chan struct{})
			errs := make(chan error, n)
			for _, r := range replicas {
				go func() {
					<-start
					_, err := r.b.Sync(context.Background())
					errs <- err
				}()
			}
			close(start)
			for range n {
				if err := <-errs; err != nil {
					t.Errorf("Sync: %v", err)
				}
			}
			if t.Failed() {
				return
			}

			sec := in.secret(t)
			for _, k := range []string{bootstrap.KeyCA, bootstrap.KeyCAKey, bootstrap.KeyCert, bootstrap.KeyKey} {
				if len(sec.Data[k]) == 0 {
					t.Errorf("Secret lacks %s", k)
				}
			}
			if _, ok := sec.Data[bootstrap.KeyPreviousCA]; ok {
				t.Errorf("fresh Secret has %s", bootstrap.KeyPreviousCA)
			}
			ca := parseCerts(t, sec.Data[bootstrap.KeyCA])
			if len(ca) != 1 {
				t.Fatalf("Secret %s holds %d certificates, want 1", bootstrap.KeyCA, len(ca))
			}
			cfg := in.config(t)
			if len(cfg.Webhooks) == 0 {
				t.Fatal("webhook configuration has no webhooks")
			}
			for _, wh := range cfg.Webhooks {
				bundle := parseCerts(t, wh.ClientConfig.CABundle)
				if len(bundle) != 1 || !bundle[0].Equal(ca[0]) {
					t.Errorf("webhook %s: caBundle holds %d certificates, want exactly the Secret's CA", wh.Name, len(bundle))
				}
				for i, r := range replicas {
					crt := r.file(t, certs.CertFile)
					if !bytes.Equal(crt, sec.Data[bootstrap.KeyCert]) {
						t.Errorf("replica %d serves a certificate that is not the Secret's", i)
					}
					if err := in.verify(crt, wh.ClientConfig.CABundle); err != nil {
						t.Errorf("replica %d: caBundle of %s does not verify its certificate: %v", i, wh.Name, err)
					}
					if _, err := tls.X509KeyPair(crt, r.file(t, certs.KeyFile)); err != nil {
						t.Errorf("replica %d: tls.crt and tls.key do not match: %v", i, err)
					}
					if !bytes.Equal(r.file(t, certs.CAFile), sec.Data[bootstrap.KeyCA]) {
						t.Errorf("replica %d: ca.crt is not the Secret's CA", i)
					}
				}
			}
			conflicts := 0
			for _, r := range replicas {
				conflicts += strings.Count(r.log.String(), "another replica changed the Secret first")
			}
			t.Logf("%d replicas, %d lost the race to write the Secret", n, conflicts)
		})
	}
}

// Someone resetting the caBundle (helm upgrade, a GitOps sync) is undone
// through the watch, without touching the serving certificate.
func TestCABundleRestored(t *testing.T) {
	in := newInstall(t)
	r := in.replica(t, nil)
	r.run(t)
	poll(t, 30*time.Second, "first certificate in the cert dir", func() error {
		_, err := os.Stat(filepath.Join(r.dir, certs.KeyFile))
		return err
	})
	sec := in.secret(t)
	ours := parseCerts(t, sec.Data[bootstrap.KeyCA])[0]
	served := r.file(t, certs.CertFile)

	for _, tc := range []struct {
		name      string
		reset     []byte
		wantCount int // certificates in the restored caBundle
	}{
		{"removed", nil, 1},
		{"garbage", []byte("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"), 1},
		// Another valid CA is kept (it could be a rotation in flight this
		// replica has not seen yet); an expired one is dropped.
		{"another CA", foreignCA(t, ours.NotBefore.Add(-time.Hour), 24*time.Hour), 2},
		{"an expired CA", foreignCA(t, ours.NotBefore.Add(-time.Hour), time.Minute), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := in.config(t)
			for i := range cfg.Webhooks {
				cfg.Webhooks[i].ClientConfig.CABundle = tc.reset
			}
			if _, err := in.admin.AdmissionregistrationV1().MutatingWebhookConfigurations().Update(context.Background(), cfg, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			poll(t, 30*time.Second, "caBundle restored", func() error {
				for _, wh := range in.config(t).Webhooks {
					if err := in.verify(served, wh.ClientConfig.CABundle); err != nil {
						return fmt.Errorf("webhook %s: %w", wh.Name, err)
					}
				}
				return nil
			})
			for _, wh := range in.config(t).Webhooks {
				bundle := parseCerts(t, wh.ClientConfig.CABundle)
				if len(bundle) != tc.wantCount || !bundle[0].Equal(ours) {
					t.Errorf("webhook %s: restored caBundle has %d certificates (first is ours: %v), want %d with ours first", wh.Name, len(bundle), len(bundle) > 0 && bundle[0].Equal(ours), tc.wantCount)
				}
			}
			if !bytes.Equal(r.file(t, certs.CertFile), served) {
				t.Error("restoring the caBundle changed the serving certificate")
			}
		})
	}
	if got := in.secret(t); !bytes.Equal(got.Data[bootstrap.KeyCert], sec.Data[bootstrap.KeyCert]) {
		t.Error("restoring the caBundle changed the Secret")
	}
}

// With short validities two replicas renew the serving certificate every
// few seconds and the CA twice; a TLS client that trusts whatever the
// caBundle says at that moment connects to both real webhook servers
// throughout.
func TestRotationKeepsTLSWorking(t *testing.T) {
	in := newInstall(t)
	short := func(o *bootstrap.Options) {
		// Certificates are backdated a minute: 95s leaves 35s, renewed
		// after 3s; the CA (120s) is rotated 20s after it is issued.
		o.CertValidity, o.CAValidity = 95*time.Second, 120*time.Second
		o.CABundlePropagation = 300 * time.Millisecond
	}
	type endpoint struct {
		r      *replica
		addr   string
		leaves map[string]bool
	}
	var eps []*endpoint
	for range 2 {
		r := in.replica(t, short)
		srv, err := server.New(server.Options{
			BindAddress: "127.0.0.1", Port: 0, CertDir: r.dir,
			CertReloadInterval: 200 * time.Millisecond,
			ShutdownTimeout:    2 * time.Second,
			Config:             mustInjectionConfig(t),
			Log:                logr.Discard(),
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- srv.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		r.run(t)
		eps = append(eps, &endpoint{r: r, addr: srv.WebhookAddr(), leaves: map[string]bool{}})
		poll(t, 30*time.Second, "webhook ready", func() error {
			if !srv.Ready() {
				return errors.New("not ready")
			}
			return nil
		})
	}

	serverName := in.opts.DNSNames()[0]
	cas := map[string]bool{}
	handshakes, failures := 0, 0
	deadline := time.Now().Add(150 * time.Second)
	for {
		if len(cas) >= 3 && len(eps[0].leaves) >= 5 && len(eps[1].leaves) >= 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("within 150s saw %d CAs and %d/%d serving certificates, want 3 and 5 each", len(cas), len(eps[0].leaves), len(eps[1].leaves))
		}
		cas[string(in.secret(t).Data[bootstrap.KeyCA])] = true
		pool := x509.NewCertPool()
		for _, wh := range in.config(t).Webhooks {
			pool.AppendCertsFromPEM(wh.ClientConfig.CABundle)
		}
		for i, ep := range eps {
			handshakes++
			conn, err := tls.Dial("tcp", ep.addr, &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12})
			if err != nil {
				failures++
				if failures <= 5 {
					t.Errorf("replica %d: TLS handshake with the caBundle as roots: %v", i, err)
				}
				continue
			}
			ep.leaves[string(conn.ConnectionState().PeerCertificates[0].Raw)] = true
			conn.Close()
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("%d handshakes, %d failed; %d CAs, %d and %d serving certificates seen", handshakes, failures, len(cas), len(eps[0].leaves), len(eps[1].leaves))

	// Settled, the caBundle trusts the Secret's current and previous CA,
	// and nothing but CAs that were in the Secret: those of replicas that
	// lost a race were taken out again.
	var inSecret []*x509.Certificate
	for p := range cas {
		inSecret = append(inSecret, parseCerts(t, []byte(p))...)
	}
	poll(t, 20*time.Second, "caBundle settled", func() error {
		sec := in.secret(t)
		want := parseCerts(t, append(bytes.Clone(sec.Data[bootstrap.KeyCA]), sec.Data[bootstrap.KeyPreviousCA]...))
		if len(want) != 2 {
			return fmt.Errorf("Secret has %d current and previous CAs, want 2", len(want))
		}
		for _, wh := range in.config(t).Webhooks {
			got := parseCerts(t, wh.ClientConfig.CABundle)
			for i, c := range want {
				if !slices.ContainsFunc(got, c.Equal) {
					return fmt.Errorf("webhook %s: caBundle lacks the Secret's CA %d", wh.Name, i)
				}
			}
			for _, c := range got {
				if !slices.ContainsFunc(inSecret, c.Equal) && !slices.ContainsFunc(want, c.Equal) {
					return fmt.Errorf("webhook %s: caBundle trusts CA %s that was never in the Secret", wh.Name, c.SerialNumber.Text(16))
				}
			}
		}
		return nil
	})
}

func mustInjectionConfig(t *testing.T) *patch.Config {
	t.Helper()
	c, err := cluster.DeployedInjectionConfig()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// foreignCA is a CA someone else made, valid from notBefore for validFor.
func foreignCA(t *testing.T, notBefore time.Time, validFor time.Duration) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42), Subject: pkix.Name{CommonName: "foreign-ca"},
		NotBefore: notBefore, NotAfter: notBefore.Add(validFor),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// The pmem-webhook binary, started with the chart's self-signed flags and
// the ServiceAccount's credentials, gets its certificate, becomes ready,
// serves TLS the caBundle trusts, and exits cleanly on SIGTERM.
func TestBinary(t *testing.T) {
	in := newInstall(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "pmem-webhook")
	build := exec.Command("go", "build", "-o", bin, "github.com/pmem-webhook/pmem-webhook/cmd/pmem-webhook")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["c"] = &clientcmdapi.Cluster{Server: in.sa.Host, CertificateAuthorityData: in.sa.CAData}
	kc.AuthInfos["sa"] = &clientcmdapi.AuthInfo{Token: in.sa.BearerToken}
	kc.Contexts["c"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "sa"}
	kc.CurrentContext = "c"
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}
	ports, err := proc.FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	webhookPort, healthPort := ports[0], ports[1]
	certDir := filepath.Join(dir, "certs")
	o := in.opts
	cmd := exec.Command(bin,
		"--bind-address=127.0.0.1", fmt.Sprintf("--port=%d", webhookPort), "--cert-dir="+certDir,
		fmt.Sprintf("--health-addr=127.0.0.1:%d", healthPort), "--metrics-addr=",
		"--self-signed", "--webhook-config-name="+o.WebhookConfigName, "--service-name="+o.ServiceName,
		"--namespace="+o.Namespace, "--cert-secret-name="+o.SecretName, "--cert-validity=8760h",
		"--kubeconfig="+kubeconfig,
	)
	var logs syncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill() // no-op once it has exited
		if t.Failed() || os.Getenv("PMEM_SHOW_LOGS") != "" {
			t.Logf("webhook log:\n%s", logs.String())
		}
	})

	poll(t, 60*time.Second, "webhook ready", func() error {
		_, err := proc.Get(context.Background(), http.DefaultClient, fmt.Sprintf("http://127.0.0.1:%d/readyz", healthPort))
		return err
	})
	pool := x509.NewCertPool()
	for _, wh := range in.config(t).Webhooks {
		pool.AppendCertsFromPEM(wh.ClientConfig.CABundle)
	}
	conn, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", webhookPort), &tls.Config{RootCAs: pool, ServerName: o.DNSNames()[1], MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("TLS with the caBundle as roots: %v", err)
	}
	leaf := conn.ConnectionState().PeerCertificates[0]
	conn.Close()
	if !bytes.Equal(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw}), in.secret(t).Data[bootstrap.KeyCert]) {
		t.Error("the webhook serves a certificate that is not the Secret's")
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("webhook exited with %v after SIGTERM", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("webhook still running 30s after SIGTERM")
	}
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}
