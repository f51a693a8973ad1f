// Package testpki issues throwaway certificates for tests and benchmarks: a
// CA, and leaf certificates with ECDSA P-256 or RSA-2048 keys written as PEM
// files.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// CA is a certificate authority whose files live in a test's temporary
// folder.
type CA struct {
	Cert *x509.Certificate
	Pool *x509.CertPool // trusts only this CA
	File string         // the CA certificate, PEM
	key  *ecdsa.PrivateKey
	dir  string
	mu   sync.Mutex
	n    int64
}

// New makes a CA valid for a day, its files in a temporary folder of t's.
func New(t testing.TB) *CA {
	t.Helper()
	ca, err := NewCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// NewCA makes a CA valid for a day, its files in dir.
func NewCA(dir string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "l4lb test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &CA{Cert: cert, Pool: x509.NewCertPool(), key: key, dir: dir, n: 1}
	ca.Pool.AddCert(cert)
	ca.File = filepath.Join(ca.dir, "ca.pem")
	return ca, write(ca.File, "CERTIFICATE", der)
}

// Issue writes a leaf certificate for names (the first is also its common
// name), with an RSA-2048 key when rsaKey, else ECDSA P-256, and returns
// the paths of its certificate and key.
func (ca *CA) Issue(t testing.TB, rsaKey bool, names ...string) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile, err := ca.IssueFiles(rsaKey, names...)
	if err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// IssueFiles is Issue, returning its error.
func (ca *CA) IssueFiles(rsaKey bool, names ...string) (certFile, keyFile string, err error) {
	ca.mu.Lock()
	ca.n++
	serial := ca.n
	ca.mu.Unlock()
	var pub, priv any
	if rsaKey {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return "", "", err
		}
		pub, priv = &k.PublicKey, k
	} else {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return "", "", err
		}
		pub, priv = &k.PublicKey, k
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.key)
	if err != nil {
		return "", "", err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return "", "", err
	}
	base := filepath.Join(ca.dir, strings.ReplaceAll(names[0], "*", "star")+"-"+big.NewInt(serial).String())
	if err := write(base+".pem", "CERTIFICATE", der); err != nil {
		return "", "", err
	}
	return base + ".pem", base + ".key", write(base+".key", "PRIVATE KEY", kder)
}

func write(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}
