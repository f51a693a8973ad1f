package tlsterm

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/l4lb/l4lb/pkg/config"
)

// certs are a listener's loaded certificates, indexed by the names they
// serve.
type certs struct {
	list  []*tls.Certificate            // as configured; list[0] is the default
	exact map[string][]*tls.Certificate // lower-case DNS names
	wild  map[string][]*tls.Certificate // "*.example.com" under "example.com"
	files []fileStamp                   // what was read, to notice changes
	file  map[*tls.Certificate]string   // each certificate's file, for the access log
}

// fileStamp is a file's modification time and size when it was read.
type fileStamp struct {
	path  string
	mtime time.Time
	size  int64
}

func stamp(path string) fileStamp {
	st := fileStamp{path: path}
	if fi, err := os.Stat(path); err == nil {
		st.mtime, st.size = fi.ModTime(), fi.Size()
	}
	return st
}

// changed reports whether any file differs from when it was read.
func (c *certs) changed() bool {
	for _, f := range c.files {
		if stamp(f.path) != f {
			return true
		}
	}
	return false
}

// loadCerts reads and checks every pair; any bad pair fails the whole set,
// naming its field.
func loadCerts(list []config.Certificate, path string) (*certs, error) {
	c := &certs{exact: map[string][]*tls.Certificate{}, wild: map[string][]*tls.Certificate{}, file: map[*tls.Certificate]string{}}
	var errs []error
	for i, pair := range list {
		c.files = append(c.files, stamp(pair.Cert), stamp(pair.Key))
		cert, err := tls.LoadX509KeyPair(pair.Cert, pair.Key)
		if err == nil && cert.Leaf == nil {
			cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0])
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s.tls.certificates[%d]: %w", path, i, err))
			continue
		}
		c.list = append(c.list, &cert)
		c.file[&cert] = pair.Cert
		names := cert.Leaf.DNSNames
		if len(names) == 0 && cert.Leaf.Subject.CommonName != "" {
			names = []string{cert.Leaf.Subject.CommonName}
		}
		for _, n := range names {
			n = strings.ToLower(strings.TrimSuffix(n, "."))
			if parent, ok := strings.CutPrefix(n, "*."); ok {
				c.wild[parent] = append(c.wild[parent], &cert)
			} else {
				c.exact[n] = append(c.exact[n], &cert)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if len(c.list) == 0 {
		return nil, fmt.Errorf("%s.tls.certificates: none", path)
	}
	return c, nil
}

// pick chooses the certificate for a ClientHello: those for the exact name,
// else those for its wildcard, else the default (the first configured, or
// another configured one the client can verify when it cannot verify the
// first, an ECDSA default beside an RSA one, say). Among several, the first
// the client supports (its signature algorithms and curves) wins.
func (c *certs) pick(hello *tls.ClientHelloInfo) *tls.Certificate {
	name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	cands := c.exact[name]
	if len(cands) == 0 && name != "" {
		if _, parent, ok := strings.Cut(name, "."); ok {
			cands = c.wild[parent]
		}
	}
	if len(cands) == 0 {
		cands = c.list
	}
	for _, cert := range cands {
		if hello.SupportsCertificate(cert) == nil {
			return cert
		}
	}
	return cands[0]
}
