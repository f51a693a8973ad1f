package config

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// CheckFiles reads every file cfg names, as serve will before it binds
// anything: each TLS certificate with its key, each CA file, the admin
// token file, and an access log's directory. validate and serve call it,
// so both refuse the same configs with the same lines.
func CheckFiles(cfg *Config) Errors {
	var errs Errors
	for i, l := range cfg.Listeners {
		if l.TLS == nil {
			continue
		}
		for j, c := range l.TLS.Certificates {
			if c.Cert == "" || c.Key == "" {
				continue // Normalize said so already
			}
			if _, err := tls.LoadX509KeyPair(c.Cert, c.Key); err != nil {
				errs.add(fmt.Sprintf("listeners[%d].tls.certificates[%d]", i, j), "%v", err)
			}
		}
		if log := l.TLS.AccessLog; log != "" {
			if st, err := os.Stat(filepath.Dir(log)); err != nil || !st.IsDir() {
				errs.add(fmt.Sprintf("listeners[%d].tls.access_log", i), "the directory of %s does not exist", log)
			}
		}
	}
	for i, g := range cfg.TargetGroups {
		if g.TLS.CAFile == "" {
			continue
		}
		pem, err := os.ReadFile(g.TLS.CAFile)
		if err != nil {
			errs.add(fmt.Sprintf("target_groups[%d].tls.ca_file", i), "%v", err)
		} else if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			errs.add(fmt.Sprintf("target_groups[%d].tls.ca_file", i), "%s holds no PEM certificate", g.TLS.CAFile)
		}
	}
	t := cfg.Registry.TLS
	if t.CertFile != "" && t.KeyFile != "" {
		if _, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile); err != nil {
			errs.add("registry.tls", "%v", err)
		}
	}
	if t.CAFile != "" {
		if pem, err := os.ReadFile(t.CAFile); err != nil {
			errs.add("registry.tls.ca_file", "%v", err)
		} else if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			errs.add("registry.tls.ca_file", "%s holds no PEM certificate", t.CAFile)
		}
	}
	if f := cfg.Admin.TokenFile; f != "" {
		b, err := os.ReadFile(f)
		switch {
		case err != nil:
			errs.add("admin.token_file", "%v", err)
		case strings.TrimSpace(string(b)) == "":
			errs.add("admin.token_file", "%s is empty", f)
		}
	}
	return errs
}

// Warnings are what is valid but probably not meant: a target group with no
// targets, whose listeners reset every client until one is registered
// through the admin API. validate prints them, serve logs them at start.
func Warnings(cfg *Config) Errors {
	var out Errors
	for i, g := range cfg.TargetGroups {
		if len(g.Targets) > 0 {
			continue
		}
		by := cfg.ListenersOf(g.Name)
		if len(by) == 0 {
			out.add(fmt.Sprintf("target_groups[%d].targets", i), "empty, and no listener routes to it")
			continue
		}
		out.add(fmt.Sprintf("target_groups[%d].targets", i), "empty: listener %s resets every client until a target is registered (l4lb targets register)", strings.Join(by, ", "))
	}
	return out
}

// ListenersOf names the listeners that route to group: as their own
// target group, in a weighted forward, or by an SNI rule.
func (c *Config) ListenersOf(group string) []string {
	var out []string
	for _, l := range c.Listeners {
		routes := l.TargetGroup == group
		for _, f := range l.Forward {
			routes = routes || f.TargetGroup == group
		}
		for _, r := range l.Rules {
			routes = routes || r.TargetGroup == group
		}
		if routes {
			out = append(out, l.Name)
		}
	}
	return out
}
