package tlsterm

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"
)

// Info is what a handshake tells the access log: the certificate chosen,
// the client's ALPN list and key-exchange group, and when and how long.
type Info struct {
	Start      time.Time // the connection was accepted
	Handshake  time.Duration
	CertFile   string // the chosen certificate's file
	CertSerial string // its serial number, hex
	ClientALPN []string
	State      tls.ConnectionState
	Alert      string // the alert the client sent, when the handshake failed on one
}

// Entry is one access-log line: a connection, from accept to close.
type Entry struct {
	Listener      string
	Client, Local netip.AddrPort
	Info          *Info
	End           time.Time
	Received      int64  // bytes from the client
	Sent          int64  // bytes to the client
	BackendALPN   string // the protocol the target agreed, TLS target groups only
}

// accessLog appends NLB's TLS access-log lines to a file.
type accessLog struct {
	mu     sync.Mutex
	f      *os.File
	w      *bufio.Writer
	path   string
	closed bool
}

func openAccessLog(path string) (*accessLog, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, err
	}
	return &accessLog{f: f, w: bufio.NewWriterSize(f, 4096), path: path}, nil
}

// write appends e as one line, in NLB's TLS access-log field order:
//
//	type version time elb listener client:port destination:port
//	connection_time tls_handshake_time received_bytes sent_bytes
//	incoming_tls_alert chosen_cert_arn chosen_cert_serial tls_cipher
//	tls_protocol_version tls_named_group domain_name alpn_fe_protocol
//	alpn_be_protocol alpn_client_preference_list tls_connection_creation_time
//
// Times are milliseconds; "-" stands for an empty field. l4lb names the
// certificate by its file, the cipher by its IANA name, and itself "l4lb".
func (a *accessLog) write(e Entry) {
	i := e.Info
	cs := i.State
	proto, group := "-", "-"
	if cs.Version != 0 {
		proto = "tlsv" + strings.ReplaceAll(strings.TrimPrefix(tls.VersionName(cs.Version), "TLS "), ".", "")
	}
	if cs.CurveID != 0 {
		group = cs.CurveID.String()
	}
	cipher := "-"
	if cs.CipherSuite != 0 {
		cipher = tls.CipherSuiteName(cs.CipherSuite)
	}
	line := fmt.Sprintf("tls 2.0 %s l4lb %s %s %s %d %d %d %d %s %s %s %s %s %s %s %s %s %s %s\n",
		e.End.UTC().Format(time.RFC3339), e.Listener, e.Client, e.Local,
		e.End.Sub(i.Start).Milliseconds(), i.Handshake.Milliseconds(), e.Received, e.Sent,
		dash(strings.ReplaceAll(i.Alert, " ", "_")), dash(i.CertFile), dash(i.CertSerial), cipher, proto, group, dash(cs.ServerName),
		dash(cs.NegotiatedProtocol), dash(e.BackendALPN), dash(strings.Join(i.ClientALPN, ",")),
		i.Start.UTC().Format(time.RFC3339))
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return
	}
	a.w.WriteString(line)
	a.w.Flush()
}

// close flushes and closes the file; lines written later are dropped.
func (a *accessLog) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return
	}
	a.closed = true
	a.w.Flush()
	a.f.Close()
}

// maxField bounds one field of a line: a client's ALPN list may hold up to
// 64 KB of names.
const maxField = 512

// dash writes a field: "-" when empty, and otherwise with every byte that
// could end the field or the line, or that a reader might take for
// something else (controls, space, quotes, backslash, non-ASCII), as \xHH,
// so a client cannot split or forge lines. A field longer than maxField is
// cut, and ends in "...".
func dash(s string) string {
	if s == "" {
		return "-"
	}
	cut := len(s) > maxField
	if cut {
		s = s[:maxField]
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || c == '"' || c == '\\' {
			fmt.Fprintf(&b, `\x%02x`, c)
			continue
		}
		b.WriteByte(c)
	}
	if cut {
		b.WriteString("...")
	}
	return b.String()
}
