// Package certs issues a throwaway CA and a serving certificate for the
// webhook: for development, tests, and clusters without cert-manager.
package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// File names inside a cert dir; the same keys cert-manager writes into a
// kubernetes.io/tls Secret, so one mount layout serves both.
const (
	CAFile   = "ca.crt"
	CertFile = "tls.crt"
	KeyFile  = "tls.key"
)

// Bundle is a CA certificate and a serving certificate + key signed by it,
// PEM encoded.
type Bundle struct {
	CAPEM, CertPEM, KeyPEM []byte
	// CAKeyPEM lets a caller issue further certificates from the same CA
	// (rotation tests renew the serving cert without touching caBundle).
	CAKeyPEM []byte
}

// Generate creates a new CA and a serving certificate for dnsNames and ips,
// valid from a minute ago (clock skew) for validFor.
func Generate(dnsNames []string, ips []net.IP, validFor time.Duration) (*Bundle, error) {
	if len(dnsNames) == 0 && len(ips) == 0 {
		return nil, errors.New("certs: need at least one DNS name or IP address for the serving certificate")
	}
	b, err := NewCA("pmem-webhook-ca", validFor)
	if err != nil {
		return nil, err
	}
	return b.Renew(dnsNames, ips, validFor)
}

// NewCA creates a bundle holding only a new self-signed CA, from which
// Renew issues serving certificates and IssueClient client certificates.
func NewCA(commonName string, validFor time.Duration) (*Bundle, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	now := time.Now().Add(-time.Minute)
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now,
		NotAfter:              now.Add(validFor),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("self-sign CA: %w", err)
	}
	caKeyDER, err := x509.MarshalECPrivateKey(caKey)
	if err != nil {
		return nil, fmt.Errorf("encode CA key: %w", err)
	}
	return &Bundle{
		CAPEM:    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		CAKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: caKeyDER}),
	}, nil
}

// Renew issues a new serving certificate and key from the bundle's CA; the
// CA (and so every caBundle that trusts it) stays the same.
func (b *Bundle) Renew(dnsNames []string, ips []net.IP, validFor time.Duration) (*Bundle, error) {
	cn := "pmem-webhook"
	if len(dnsNames) > 0 {
		cn = dnsNames[0]
	}
	out := &Bundle{CAPEM: b.CAPEM, CAKeyPEM: b.CAKeyPEM}
	var err error
	out.CertPEM, out.KeyPEM, err = b.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		DNSNames:    dnsNames,
		IPAddresses: ips,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, validFor)
	return out, err
}

// IssueClient issues a client certificate (for example the apiserver's
// certificate towards a kubelet) from the bundle's CA.
func (b *Bundle) IssueClient(commonName string, organizations []string, validFor time.Duration) (certPEM, keyPEM []byte, err error) {
	return b.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: commonName, Organization: organizations},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, validFor)
}

// issue signs tmpl (subject, names and extended key usage set by the
// caller) with a new key, valid from a minute ago for validFor.
func (b *Bundle) issue(tmpl *x509.Certificate, validFor time.Duration) (certPEM, keyPEM []byte, err error) {
	caBlock, _ := pem.Decode(b.CAPEM)
	keyBlock, _ := pem.Decode(b.CAKeyPEM)
	if caBlock == nil || keyBlock == nil {
		return nil, nil, errors.New("certs: bundle has no CA certificate and key to issue from")
	}
	ca, err := x509.ParseCertificate(caBlock.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("parse CA: %w", err)
	}
	caKey, err := x509.ParseECPrivateKey(keyBlock.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("parse CA key: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	now := time.Now().Add(-time.Minute)
	tmpl.SerialNumber = serial()
	tmpl.NotBefore, tmpl.NotAfter = now, now.Add(validFor)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("sign certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), nil
}

// WriteDir writes ca.crt, tls.crt and tls.key into dir. Each file is
// written to a temporary name and renamed, so a watcher never reads a
// half-written certificate.
func (b *Bundle) WriteDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create cert dir: %w", err)
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{{CAFile, b.CAPEM, 0o644}, {CertFile, b.CertPEM, 0o644}, {KeyFile, b.KeyPEM, 0o600}} {
		tmp := filepath.Join(dir, "."+f.name+".tmp")
		if err := os.WriteFile(tmp, f.data, f.mode); err != nil {
			return fmt.Errorf("write %s: %w", f.name, err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, f.name)); err != nil {
			return fmt.Errorf("install %s: %w", f.name, err)
		}
	}
	return nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		// crypto/rand never fails on Linux >= 3.17 (getrandom).
		panic(fmt.Sprintf("certs: read random serial: %v", err))
	}
	return n
}
