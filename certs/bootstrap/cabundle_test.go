package bootstrap

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"slices"
	"testing"
	"time"
)

// testCA is a self-signed CA with exactly the given validity window, so the
// tests control which CA is older or expired.
func testCA(t *testing.T, serial int64, notBefore, notAfter time.Time) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: "test-ca"},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func serials(t *testing.T, bundle []byte) []int64 {
	t.Helper()
	cs, junk := splitPEM(bundle)
	if junk {
		t.Errorf("output bundle has junk: %q", bundle)
	}
	var out []int64
	for _, c := range cs {
		out = append(out, c.SerialNumber.Int64())
	}
	return out
}

func cat(parts ...[]byte) []byte { return slices.Concat(parts...) }

func TestMergeBundle(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	older := testCA(t, 1, now.Add(-48*time.Hour), now.Add(48*time.Hour))
	prev := testCA(t, 2, now.Add(-24*time.Hour), now.Add(24*time.Hour))
	cur := testCA(t, 3, now.Add(-time.Hour), now.Add(72*time.Hour))
	newer := testCA(t, 4, now.Add(-time.Minute), now.Add(72*time.Hour))
	expired := testCA(t, 5, now.Add(-time.Hour), now.Add(-time.Second))
	pem := func(cs ...*x509.Certificate) []byte { return encodeCerts(cs) }

	for _, tc := range []struct {
		name        string
		existing    []byte
		want        []*x509.Certificate
		wantSerials []int64
		wantChanged bool
	}{
		{"empty gets the CA", nil, []*x509.Certificate{cur}, []int64{3}, true},
		{"already exactly the CA", pem(cur), []*x509.Certificate{cur}, []int64{3}, false},
		{"same set, other order: left alone", pem(prev, cur), []*x509.Certificate{cur, prev}, []int64{3, 2}, false},
		{"previous CA added", pem(cur), []*x509.Certificate{cur, prev}, []int64{3, 2}, true},
		{"garbage replaced", []byte("not a certificate"), []*x509.Certificate{cur}, []int64{3}, true},
		{"garbage after the CA dropped", cat(pem(cur), []byte("trailing")), []*x509.Certificate{cur}, []int64{3}, true},
		{"duplicate folded", pem(cur, cur), []*x509.Certificate{cur}, []int64{3}, true},
		// Valid CAs this replica does not know may be trusted for a
		// replica that serves from them: kept until they expire.
		{"other CA kept", pem(older, cur), []*x509.Certificate{cur}, []int64{3, 1}, false},
		{"previous CA no longer wanted kept", pem(cur, prev), []*x509.Certificate{cur}, []int64{3, 2}, false},
		{"newer CA kept when adding ours", pem(newer), []*x509.Certificate{cur}, []int64{3, 4}, true},
		{"expired CA dropped", pem(cur, expired), []*x509.Certificate{cur}, []int64{3}, true},
		{"expired CA dropped, nothing else to do", pem(expired, cur, prev), []*x509.Certificate{cur, prev}, []int64{3, 2}, true},
		{"rotation: new CA first, old kept", pem(cur, prev), []*x509.Certificate{newer, cur, prev}, []int64{4, 3, 2}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, changed := mergeBundle(tc.existing, tc.want, now)
			if changed != tc.wantChanged {
				t.Errorf("changed = %v, want %v", changed, tc.wantChanged)
			}
			if got := serials(t, out); !slices.Equal(got, tc.wantSerials) {
				t.Errorf("bundle serials %v, want %v", got, tc.wantSerials)
			}
		})
	}
}

func TestRemoveFromBundle(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	a := testCA(t, 1, now.Add(-time.Hour), now.Add(time.Hour))
	b := testCA(t, 2, now.Add(-time.Hour), now.Add(time.Hour))
	for _, tc := range []struct {
		name        string
		existing    []*x509.Certificate
		wantSerials []int64
		wantChanged bool
	}{
		{"present", []*x509.Certificate{a, b}, []int64{1}, true},
		{"absent", []*x509.Certificate{a}, []int64{1}, false},
		{"only one", []*x509.Certificate{b}, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, changed := removeFromBundle(encodeCerts(tc.existing), b)
			if changed != tc.wantChanged {
				t.Errorf("changed = %v, want %v", changed, tc.wantChanged)
			}
			if got := serials(t, out); !slices.Equal(got, tc.wantSerials) {
				t.Errorf("bundle serials %v, want %v", got, tc.wantSerials)
			}
			if bundleTrusts(out, b) {
				t.Error("bundle still trusts the removed CA")
			}
		})
	}
}
