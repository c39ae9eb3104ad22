package cluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// pki is the throw-away key material of one control plane: a CA, the
// apiserver's serving cert, an admin client cert (group system:masters, so no
// RBAC setup is needed) and the service-account signing key.
//
// The product's certs package makes serving certificates only; the control
// plane also needs a client certificate and an RSA service-account key, so the
// harness keeps its own small generator.
type pki struct {
	CAFile, CAKeyFile               string
	ServingCertFile, ServingKeyFile string
	AdminCertFile, AdminKeyFile     string
	SAKeyFile, SAPubFile            string

	CAPEM, AdminCertPEM, AdminKeyPEM []byte
}

type keyPair struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	der  []byte
}

func newPKI(dir string, validFor time.Duration) (*pki, error) {
	now := time.Now()
	ca, err := newCert(nil, &x509.Certificate{
		Subject:               pkix.Name{CommonName: "pmem-webhook-test-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validFor),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	})
	if err != nil {
		return nil, fmt.Errorf("CA: %w", err)
	}
	serving, err := newCert(ca, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:   now.Add(-time.Hour),
		NotAfter:    now.Add(validFor),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 0, 0, 1)},
	})
	if err != nil {
		return nil, fmt.Errorf("apiserver serving cert: %w", err)
	}
	admin, err := newCert(ca, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "pmem-webhook-test-admin", Organization: []string{"system:masters"}},
		NotBefore:   now.Add(-time.Hour),
		NotAfter:    now.Add(validFor),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, fmt.Errorf("admin client cert: %w", err)
	}
	// Service-account tokens are signed RS256 by default; an RSA key keeps the
	// apiserver flags at their defaults.
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("service-account key: %w", err)
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("service-account public key: %w", err)
	}

	p := &pki{
		CAFile:          filepath.Join(dir, "ca.crt"),
		CAKeyFile:       filepath.Join(dir, "ca.key"),
		ServingCertFile: filepath.Join(dir, "apiserver.crt"),
		ServingKeyFile:  filepath.Join(dir, "apiserver.key"),
		AdminCertFile:   filepath.Join(dir, "admin.crt"),
		AdminKeyFile:    filepath.Join(dir, "admin.key"),
		SAKeyFile:       filepath.Join(dir, "sa.key"),
		SAPubFile:       filepath.Join(dir, "sa.pub"),
		CAPEM:           certPEM(ca),
		AdminCertPEM:    certPEM(admin),
	}
	if p.AdminKeyPEM, err = keyPEM(admin); err != nil {
		return nil, err
	}
	servingKey, err := keyPEM(serving)
	if err != nil {
		return nil, err
	}
	caKey, err := keyPEM(ca)
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{
		p.CAFile:          p.CAPEM,
		p.CAKeyFile:       caKey,
		p.ServingCertFile: certPEM(serving),
		p.ServingKeyFile:  servingKey,
		p.AdminCertFile:   p.AdminCertPEM,
		p.AdminKeyFile:    p.AdminKeyPEM,
		p.SAKeyFile:       pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey)}),
		p.SAPubFile:       pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPub}),
	}
	for name, data := range files {
		if err := os.WriteFile(name, data, 0o600); err != nil {
			return nil, fmt.Errorf("write %s: %w", name, err)
		}
	}
	return p, nil
}

// newCert signs tmpl with parent, or self-signs it when parent is nil.
func newCert(parent *keyPair, tmpl *x509.Certificate) (*keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	signer, signerCert := key, tmpl
	if parent != nil {
		signer, signerCert = parent.key, parent.cert
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signerCert, &key.PublicKey, signer)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &keyPair{cert: cert, key: key, der: der}, nil
}

func certPEM(k *keyPair) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: k.der})
}

func keyPEM(k *keyPair) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(k.key)
	if err != nil {
		return nil, fmt.Errorf("marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}
