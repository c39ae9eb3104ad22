package certs

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestGenerateVerifies(t *testing.T) {
	names := []string{"pmem-webhook.pmem-system.svc", "pmem-webhook.pmem-system.svc.cluster.local"}
	b, err := Generate(names, []net.IP{net.IPv4(127, 0, 0, 1)}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	renewed, err := b.Renew(names, []net.IP{net.IPv4(127, 0, 0, 1)}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b.CAPEM) {
		t.Fatal("CA PEM does not parse")
	}
	for _, bundle := range []*Bundle{b, renewed} {
		pair, err := tls.X509KeyPair(bundle.CertPEM, bundle.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(pair.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		for _, host := range append(names, "127.0.0.1") {
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: host, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				t.Errorf("cert does not verify for %s: %v", host, err)
			}
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "evil.example"}); err == nil {
			t.Error("cert verifies for a name it was not issued for")
		}
	}
	if string(renewed.CertPEM) == string(b.CertPEM) {
		t.Error("Renew returned the same certificate")
	}
}

func TestWriteDir(t *testing.T) {
	b, err := Generate([]string{"localhost"}, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "certs")
	if err := b.WriteDir(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := tls.LoadX509KeyPair(filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode = %v, %v; want 0600", st.Mode().Perm(), err)
	}
}

func TestGenerateNeedsAName(t *testing.T) {
	if _, err := Generate(nil, nil, time.Hour); err == nil {
		t.Fatal("Generate with no names succeeded")
	}
}

func TestIssueClient(t *testing.T) {
	ca, err := NewCA("test client CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.IssueClient("kube-apiserver-kubelet-client", []string{"system:masters"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CAPEM)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client cert does not verify for client auth: %v", err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("client cert verifies for server auth")
	}
	if leaf.Subject.CommonName != "kube-apiserver-kubelet-client" || len(leaf.Subject.Organization) != 1 || leaf.Subject.Organization[0] != "system:masters" {
		t.Errorf("subject %v", leaf.Subject)
	}
	if _, _, err := (&Bundle{}).IssueClient("x", nil, time.Hour); err == nil {
		t.Error("IssueClient without a CA succeeded")
	}
}
