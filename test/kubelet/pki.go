package kubelet

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/pmem-webhook/pmem-webhook/certs"
)

// kubeletClientPKI is how the kubelet knows the apiserver (for logs, exec, port-forward): a
// CA the kubelet trusts for client certificates, and the one client certificate it signs,
// given to the apiserver with --kubelet-client-certificate. Anonymous requests to the kubelet
// are refused, so nothing else on the machine can exec into the test pods.
type kubeletClientPKI struct {
	CAFile, CertFile, KeyFile string
}

func newKubeletClientPKI(dir string, validFor time.Duration) (*kubeletClientPKI, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ca, err := certs.NewCA("pmem-e2e kubelet client CA", validFor)
	if err != nil {
		return nil, fmt.Errorf("kubelet client CA: %w", err)
	}
	certPEM, keyPEM, err := ca.IssueClient("kube-apiserver-kubelet-client", []string{"system:masters"}, validFor)
	if err != nil {
		return nil, fmt.Errorf("kubelet client certificate: %w", err)
	}
	p := &kubeletClientPKI{
		CAFile:   filepath.Join(dir, "kubelet-client-ca.crt"),
		CertFile: filepath.Join(dir, "apiserver-kubelet-client.crt"),
		KeyFile:  filepath.Join(dir, "apiserver-kubelet-client.key"),
	}
	for path, data := range map[string][]byte{p.CAFile: ca.CAPEM, p.CertFile: certPEM, p.KeyFile: keyPEM} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return nil, err
		}
	}
	return p, nil
}
