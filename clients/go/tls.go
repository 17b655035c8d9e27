package nexuskv

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// TLSFiles names PEM files for TLSConfigFromFiles.
type TLSFiles struct {
	// RootCAFile is the CA bundle the server's certificate must chain to. Empty: the system roots.
	RootCAFile string
	// CertFile and KeyFile are the client certificate chain and its private key, presented to a
	// server that requires mutual TLS (--tls_client_ca_file). Both or neither.
	CertFile string
	KeyFile  string
	// ServerName overrides the name the server's certificate must carry; empty: the host of the
	// target given to New (a subjectAltName such as IP:127.0.0.1 or DNS:kv-tier.internal).
	ServerName string
}

// TLSConfigFromFiles builds Options.TLS: TLS against RootCAFile (or the system roots), mutual TLS
// with CertFile and KeyFile. The files are read once, here. An error when only one of CertFile and
// KeyFile is set, or a file cannot be read or holds no usable PEM. A handshake the server refuses
// is not detected here: calls then fail with Unavailable.
func TLSConfigFromFiles(files TLSFiles) (*tls.Config, error) {
	config := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: files.ServerName}
	if files.RootCAFile != "" {
		pem, err := os.ReadFile(files.RootCAFile)
		if err != nil {
			return nil, fmt.Errorf("nexuskv: read RootCAFile: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("nexuskv: RootCAFile %s holds no PEM certificate", files.RootCAFile)
		}
		config.RootCAs = pool
	}
	if (files.CertFile == "") != (files.KeyFile == "") {
		return nil, errors.New("nexuskv: set both CertFile and KeyFile for mutual TLS, or neither")
	}
	if files.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(files.CertFile, files.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("nexuskv: client certificate: %w", err)
		}
		config.Certificates = []tls.Certificate{cert}
	}
	return config, nil
}
