package bootstrap

import (
	"crypto/x509"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pmem-webhook/pmem-webhook/certs"
)

var testNames = []string{"pmem-webhook.pmem-system.svc", "pmem-webhook.pmem-system.svc.cluster.local"}

// secretData is what a replica writes: a CA valid for caFor and a serving
// certificate from it valid for certFor.
func secretData(t *testing.T, names []string, caFor, certFor time.Duration) map[string][]byte {
	t.Helper()
	b, err := certs.Generate(names, nil, caFor)
	if err != nil {
		t.Fatal(err)
	}
	if b, err = b.Renew(names, nil, certFor); err != nil {
		t.Fatal(err)
	}
	return map[string][]byte{KeyCA: b.CAPEM, KeyCAKey: b.CAKeyPEM, KeyCert: b.CertPEM, KeyKey: b.KeyPEM}
}

func TestDecide(t *testing.T) {
	good := secretData(t, testNames, 3*time.Hour, time.Hour)
	other := secretData(t, testNames, 3*time.Hour, time.Hour)
	wrongNames := secretData(t, []string{"other.pmem-system.svc"}, 3*time.Hour, time.Hour)
	extraNames := secretData(t, append(slices.Clone(testNames), "extra.example"), 3*time.Hour, time.Hour)
	m := parseMaterial(good)
	caDue, certDue := renewAt(m.ca), renewAt(m.cert)
	fresh := m.cert.NotBefore.Add(2 * time.Minute)
	// A previous CA that expires before anything else is due.
	shortPrev := secretData(t, testNames, 95*time.Second, 95*time.Second)[KeyCA]

	with := func(changes map[string][]byte) map[string][]byte {
		d := maps.Clone(good)
		for k, v := range changes {
			if v == nil {
				delete(d, k)
			} else {
				d[k] = v
			}
		}
		return d
	}
	for _, tc := range []struct {
		name       string
		data       map[string][]byte
		now        time.Time
		want       action
		reason     string // substring of the reason
		wantNextAt time.Time
	}{
		{name: "empty secret", data: nil, now: fresh, want: actNewCA, reason: "no ca.crt"},
		{name: "CA not PEM", data: with(map[string][]byte{KeyCA: []byte("junk")}), now: fresh, want: actNewCA, reason: "not a PEM certificate"},
		{name: "CA key missing", data: with(map[string][]byte{KeyCAKey: nil}), now: fresh, want: actNewCA, reason: "ca.key"},
		{name: "CA key of another CA", data: with(map[string][]byte{KeyCAKey: other[KeyCAKey]}), now: fresh, want: actNewCA, reason: "does not belong to the CA"},
		{name: "leaf as CA", data: with(map[string][]byte{KeyCA: good[KeyCert]}), now: fresh, want: actNewCA, reason: "not a CA certificate"},
		{name: "CA expired", data: good, now: m.ca.NotAfter.Add(time.Second), want: actNewCA, reason: "not valid now"},
		{name: "CA due", data: good, now: caDue, want: actRotateCA, reason: "CA is past 2/3"},
		{name: "serving cert missing", data: with(map[string][]byte{KeyCert: nil}), now: fresh, want: actIssue, reason: "no PEM certificate in tls.crt"},
		{name: "serving key of another cert", data: with(map[string][]byte{KeyKey: other[KeyKey]}), now: fresh, want: actIssue, reason: "not a certificate and its key"},
		{name: "serving cert from another CA", data: with(map[string][]byte{KeyCert: other[KeyCert], KeyKey: other[KeyKey]}), now: fresh, want: actIssue, reason: "does not verify"},
		{name: "serving cert for other names", data: with(map[string][]byte{KeyCA: wrongNames[KeyCA], KeyCAKey: wrongNames[KeyCAKey], KeyCert: wrongNames[KeyCert], KeyKey: wrongNames[KeyKey]}), now: fresh, want: actIssue, reason: "does not verify"},
		{name: "serving cert with an extra name", data: extraNames, now: fresh, want: actIssue, reason: "serving certificate is for"},
		{name: "serving cert expired", data: good, now: m.cert.NotAfter.Add(time.Second), want: actIssue, reason: "does not verify"},
		{name: "serving cert due", data: good, now: certDue, want: actIssue, reason: "serving certificate is past 2/3"},
		{name: "all fresh", data: good, now: fresh, want: actNone, wantNextAt: certDue},
		{name: "just before serving cert due", data: good, now: certDue.Add(-time.Second), want: actNone, wantNextAt: certDue},
		{name: "previous CA expiring first", data: with(map[string][]byte{KeyPreviousCA: shortPrev}), now: fresh.Add(-time.Minute - time.Second), want: actNone, wantNextAt: mustParse(t, shortPrev).NotAfter},
		{name: "expired previous CA ignored", data: with(map[string][]byte{KeyPreviousCA: shortPrev}), now: fresh, want: actNone, wantNextAt: certDue},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := decide(parseMaterial(tc.data), testNames, tc.now)
			if d.act != tc.want {
				t.Fatalf("decide = %q (%s), want %q", d.act, d.reason, tc.want)
			}
			if !strings.Contains(d.reason, tc.reason) {
				t.Errorf("reason %q does not contain %q", d.reason, tc.reason)
			}
			if tc.want == actNone && !d.next.Equal(tc.wantNextAt) {
				t.Errorf("next = %s, want %s", d.next, tc.wantNextAt)
			}
		})
	}
	// The CA (3h) is due after 2h, the serving certificate (1h) after 40m:
	// the fixture exercises the order decide checks them in.
	if !certDue.Before(caDue) {
		t.Fatalf("fixture: serving cert due %s not before CA due %s", certDue, caDue)
	}
}

// A freshly issued bundle at the shortest allowed validity is not due at
// once; otherwise replicas would renew in a loop.
func TestMinValidityNotDueAtIssue(t *testing.T) {
	issued := time.Now()
	d := decide(parseMaterial(secretData(t, testNames, minValidity, minValidity)), testNames, issued)
	if d.act != actNone {
		t.Fatalf("fresh bundle with %s validity: %q (%s)", minValidity, d.act, d.reason)
	}
	if !d.next.After(issued) {
		t.Errorf("next check %s not after issue time %s", d.next, issued)
	}
}

func mustParse(t *testing.T, p []byte) *x509.Certificate {
	t.Helper()
	c, err := parseCert(p)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
