// Package tlsterm terminates TLS on TLS listeners: the certificates, chosen
// by SNI (exact name, then wildcard, then the default, and between an ECDSA
// and an RSA certificate for the same name by what the client can verify);
// ELB's security policies as protocol versions and cipher suites; NLB's
// ALPN policies; session-ticket keys shared by every listener of the process
// and rotated on a schedule; a deadline and a concurrency cap on handshakes;
// and certificates reloaded when their files change, with a bad new pair
// refused and the old one kept.
//
// The TCP data plane (lb/tcpproxy) calls Handshake on an accepted
// connection and then moves the decrypted bytes with its usual copy.
package tlsterm
