package bootstrap

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"slices"
	"time"
)

// mergeBundle computes the caBundle that trusts every CA in want (first, in
// that order) and returns it with changed=false when existing already
// trusts exactly that set (in any order), so the caller writes only when
// something differs.
//
// Other valid certificates in existing are kept: one may be a CA from a
// Secret update this replica has not seen yet, or one a replica still
// serves from while it switches, and removing it could make the apiserver
// distrust a replica that already serves a certificate it signed. Whoever
// can write the configuration could point it anywhere anyway, so keeping a
// CA someone else added grants nothing. Expired certificates, duplicates
// and anything that does not parse are dropped.
func mergeBundle(existing []byte, want []*x509.Certificate, now time.Time) (out []byte, changed bool) {
	var keep []*x509.Certificate
	for _, c := range want {
		if c != nil && !containsCert(keep, c) {
			keep = append(keep, c)
		}
	}
	blocks, junk := splitPEM(existing)
	dropped := junk
	for _, c := range blocks {
		switch {
		case containsCert(keep, c):
		case now.Before(c.NotAfter):
			keep = append(keep, c)
		default:
			dropped = true
		}
	}
	out = encodeCerts(keep)
	if dropped || len(blocks) != len(keep) {
		return out, true
	}
	// Same size, no duplicates: the same set if every wanted CA was there.
	for _, c := range keep {
		if !containsCert(blocks, c) {
			return out, true
		}
	}
	return out, false
}

// removeFromBundle drops c from existing; changed=false if it was not there.
func removeFromBundle(existing []byte, c *x509.Certificate) (out []byte, changed bool) {
	// Unparsable blocks go too: the bundle is rewritten anyway.
	blocks, _ := splitPEM(existing)
	if !containsCert(blocks, c) {
		return existing, false
	}
	var keep []*x509.Certificate
	for _, b := range blocks {
		if !b.Equal(c) {
			keep = append(keep, b)
		}
	}
	return encodeCerts(keep), true
}

// bundleTrusts reports whether bundle contains c.
func bundleTrusts(bundle []byte, c *x509.Certificate) bool {
	blocks, _ := splitPEM(bundle)
	return containsCert(blocks, c)
}

// splitPEM parses every CERTIFICATE block; junk reports anything else
// (other block types, unparsable certificates, trailing garbage).
func splitPEM(p []byte) (certs []*x509.Certificate, junk bool) {
	rest := p
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			junk = true
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			junk = true
			continue
		}
		if containsCert(certs, c) {
			junk = true // a duplicate: rewriting folds it
			continue
		}
		certs = append(certs, c)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		junk = true
	}
	return certs, junk
}

func containsCert(list []*x509.Certificate, c *x509.Certificate) bool {
	return slices.ContainsFunc(list, c.Equal)
}

func encodeCerts(list []*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range list {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return buf.Bytes()
}
