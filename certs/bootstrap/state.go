package bootstrap

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Keys of the shared Secret. ca.crt, tls.crt and tls.key are the names
// cert-manager uses too; ca.key lets any replica renew from the same CA;
// ca-previous.crt is the CA that was replaced last, kept in the caBundle
// until it expires so replicas still serving a certificate it signed stay
// trusted while they switch.
const (
	KeyCA         = "ca.crt"
	KeyCAKey      = "ca.key"
	KeyCert       = "tls.crt"
	KeyKey        = "tls.key"
	KeyPreviousCA = "ca-previous.crt"
)

// material is what the Secret holds, parsed. Fields are nil when the
// corresponding key is missing or does not parse.
type material struct {
	data   map[string][]byte
	ca     *x509.Certificate
	cert   *x509.Certificate
	prevCA *x509.Certificate
}

func parseMaterial(data map[string][]byte) material {
	m := material{data: data}
	m.ca, _ = parseCert(data[KeyCA])
	m.cert, _ = parseCert(data[KeyCert])
	m.prevCA, _ = parseCert(data[KeyPreviousCA])
	return m
}

// action is what a replica has to do to the Secret.
type action int

const (
	actNone     action = iota
	actNewCA           // no usable CA: generate CA and serving certificate
	actRotateCA        // CA past 2/3 of its validity: new CA, the old one stays trusted
	actIssue           // serving certificate missing, invalid or due: renew from the same CA
)

func (a action) String() string {
	return [...]string{"none", "generate CA", "rotate CA", "renew serving certificate"}[a]
}

// decision is the outcome of decide: the action, why, and when (absent
// other changes) the Secret next needs attention.
type decision struct {
	act    action
	reason string
	next   time.Time
}

// renewAt is the point after two thirds of c's validity, when it is renewed;
// a third of the validity is left as margin for failures and slow replicas.
func renewAt(c *x509.Certificate) time.Time {
	return c.NotBefore.Add(c.NotAfter.Sub(c.NotBefore) * 2 / 3)
}

// decide looks at the Secret's material at time now and says what has to
// change for it to hold a CA and a serving certificate for dnsNames that
// are both valid and not yet due for renewal.
func decide(m material, dnsNames []string, now time.Time) decision {
	if err := checkCA(m, now); err != nil {
		return decision{act: actNewCA, reason: err.Error()}
	}
	caDue := renewAt(m.ca)
	if !now.Before(caDue) {
		return decision{act: actRotateCA, reason: fmt.Sprintf("CA is past 2/3 of its validity (renew at %s, expires %s)", caDue.UTC().Format(time.RFC3339), m.ca.NotAfter.UTC().Format(time.RFC3339))}
	}
	if err := checkServing(m, dnsNames, now); err != nil {
		return decision{act: actIssue, reason: err.Error()}
	}
	certDue := renewAt(m.cert)
	if !now.Before(certDue) {
		return decision{act: actIssue, reason: fmt.Sprintf("serving certificate is past 2/3 of its validity (renew at %s, expires %s)", certDue.UTC().Format(time.RFC3339), m.cert.NotAfter.UTC().Format(time.RFC3339))}
	}
	next := earliest(caDue, certDue)
	// Wake up when the previous CA expires, to drop it from the caBundle.
	if m.prevCA != nil && now.Before(m.prevCA.NotAfter) {
		next = earliest(next, m.prevCA.NotAfter)
	}
	return decision{act: actNone, next: next}
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// checkCA reports why the Secret's CA cannot be used to issue certificates.
func checkCA(m material, now time.Time) error {
	if len(m.data[KeyCA]) == 0 {
		return fmt.Errorf("secret has no %s", KeyCA)
	}
	if m.ca == nil {
		return fmt.Errorf("secret key %s is not a PEM certificate", KeyCA)
	}
	if !m.ca.IsCA {
		return fmt.Errorf("secret key %s is not a CA certificate", KeyCA)
	}
	if now.After(m.ca.NotAfter) || now.Before(m.ca.NotBefore) {
		return fmt.Errorf("CA in %s is not valid now (valid %s to %s)", KeyCA, m.ca.NotBefore.UTC().Format(time.RFC3339), m.ca.NotAfter.UTC().Format(time.RFC3339))
	}
	key, err := parseECKey(m.data[KeyCAKey])
	if err != nil {
		return fmt.Errorf("secret key %s: %w", KeyCAKey, err)
	}
	if !key.PublicKey.Equal(m.ca.PublicKey) {
		return fmt.Errorf("secret key %s does not belong to the CA in %s", KeyCAKey, KeyCA)
	}
	return nil
}

// checkServing reports why the Secret's serving certificate must not be
// served: missing, not matching its key, not signed by the CA, not valid
// now, or not for exactly dnsNames.
func checkServing(m material, dnsNames []string, now time.Time) error {
	if m.cert == nil {
		return fmt.Errorf("secret has no PEM certificate in %s", KeyCert)
	}
	if _, err := tls.X509KeyPair(m.data[KeyCert], m.data[KeyKey]); err != nil {
		return fmt.Errorf("secret keys %s and %s are not a certificate and its key: %w", KeyCert, KeyKey, err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(m.ca)
	if _, err := m.cert.Verify(x509.VerifyOptions{
		Roots:       roots,
		DNSName:     dnsNames[0],
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return fmt.Errorf("serving certificate does not verify against the CA: %w", err)
	}
	have := slices.Sorted(slices.Values(m.cert.DNSNames))
	want := slices.Sorted(slices.Values(dnsNames))
	if !slices.Equal(have, want) {
		return fmt.Errorf("serving certificate is for %v, want %v", have, want)
	}
	return nil
}

func parseCert(p []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(p)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("not a PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}

func parseECKey(p []byte) (*ecdsa.PrivateKey, error) {
	b, _ := pem.Decode(p)
	if b == nil {
		return nil, errors.New("not a PEM private key")
	}
	return x509.ParseECPrivateKey(b.Bytes)
}
