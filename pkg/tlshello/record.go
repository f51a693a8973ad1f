package tlshello

import (
	"bytes"
	"crypto/tls"
	"errors"
	"net"
	"time"
)

// Record returns the ClientHello that crypto/tls sends for cfg, as it would
// reach a server: for tests and load generators that speak first without
// finishing a handshake.
func Record(cfg *tls.Config) ([]byte, error) {
	client, server := net.Pipe()
	defer server.Close()
	go func() {
		tls.Client(client, cfg).Handshake() // fails once the pipe closes; only its hello matters
		client.Close()
	}()
	var buf bytes.Buffer
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	chunk := make([]byte, 4096)
	for {
		n, err := server.Read(chunk)
		buf.Write(chunk[:n])
		if _, perr := ServerName(buf.Bytes()); !errors.Is(perr, ErrShort) {
			return buf.Bytes(), nil
		}
		if err != nil {
			return nil, err
		}
	}
}
