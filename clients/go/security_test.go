package nexuskv_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	nexuskv "github.com/nexuskv/nexuskv/clients/go"
	pb "github.com/nexuskv/nexuskv/clients/go/nexuskvpb"
)

// pki writes a CA and certificates it signed (PEM) into dir: ca.pem, server.pem/server.key (for
// IP 127.0.0.1), client.pem/client.key; other-ca.pem is a CA that signed nothing here.
func pki(t *testing.T, dir string) {
	t.Helper()
	write := func(name, kind string, der []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	serial := int64(1)
	issue := func(name string, template *x509.Certificate, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		serial++
		template.SerialNumber = big.NewInt(serial)
		template.Subject = pkix.Name{CommonName: name}
		template.NotBefore = time.Now().Add(-time.Hour)
		template.NotAfter = time.Now().Add(24 * time.Hour)
		if parent == nil {
			parent, parentKey = template, key
		}
		der, err := x509.CreateCertificate(rand.Reader, template, parent, &key.PublicKey, parentKey)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		write(name+".pem", "CERTIFICATE", der)
		keyDer, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		write(name+".key", "PRIVATE KEY", keyDer)
		return cert, key
	}
	caTemplate := func() *x509.Certificate {
		return &x509.Certificate{IsCA: true, BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	}
	ca, caKey := issue("ca", caTemplate(), nil, nil)
	issue("server", &x509.Certificate{IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, ca, caKey)
	issue("client", &x509.Certificate{KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, ca, caKey)
	issue("other-ca", caTemplate(), nil, nil)
}

// A server with mutual TLS and a tokens file: the client's TLS, client certificate and bearer
// token all have to be right, and the token picks the tenant.
func TestMutualTLSAndBearerTokens(t *testing.T) {
	dir := t.TempDir()
	pki(t, dir)
	path := func(name string) string { return filepath.Join(dir, name) }
	hash := func(token string) string { sum := sha256.Sum256([]byte(token)); return hex.EncodeToString(sum[:]) }
	tokens := "tenant-a sha256:" + hash("token-a") + "\ntenant-b sha256:" + hash("token-b") + "\n"
	if err := os.WriteFile(path("tokens"), []byte(tokens), 0o600); err != nil {
		t.Fatal(err)
	}
	mtls, err := nexuskv.TLSConfigFromFiles(nexuskv.TLSFiles{RootCAFile: path("ca.pem"),
		CertFile: path("client.pem"), KeyFile: path("client.key")})
	if err != nil {
		t.Fatal(err)
	}
	s, err := startServer(grpc.WithTransportCredentials(credentials.NewTLS(mtls.Clone())),
		"--tls_cert_file="+path("server.pem"), "--tls_key_file="+path("server.key"),
		"--tls_client_ca_file="+path("ca.pem"), "--auth_tokens_file="+path("tokens"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.stop()
	ctx := context.Background()
	m := spec(pb.DType_DTYPE_FLOAT16)

	a := newClient(t, s, nexuskv.Options{TLS: mtls, BearerToken: "token-a"})
	appendSession(t, a, "chat", m, []int{3, 2})
	cache, err := a.GetCache(ctx, &pb.GetCacheRequest{SessionId: "chat", Method: pb.Method_SNAPKV, Budget: nexuskv.MaxTokens(3)})
	if err != nil || cache.Header.EntriesPerLayer[0] > 3 {
		t.Fatalf("GetCache over mutual TLS: %v, %v", cache, err)
	}
	if all, err := a.ListAllSessions(ctx, "", 0); err != nil || len(all) != 1 {
		t.Fatalf("tenant-a lists %v, %v", all, err)
	}

	// Tenant b sees nothing of tenant a's.
	b := newClient(t, s, nexuskv.Options{TLS: mtls, BearerToken: "token-b"})
	if _, err := b.GetSession(ctx, "chat"); code(err) != codes.NotFound {
		t.Fatalf("tenant-b reads tenant-a's session: %v", err)
	}
	// No token, or an unknown one: UNAUTHENTICATED.
	for _, token := range []string{"", "token-c"} {
		c := newClient(t, s, nexuskv.Options{TLS: mtls, BearerToken: token})
		if _, err := c.GetSession(ctx, "chat"); code(err) != codes.Unauthenticated {
			t.Fatalf("token %q: %v", token, err)
		}
		if _, err := c.ListSessions(ctx, &pb.ListSessionsRequest{}); code(err) != codes.Unauthenticated {
			t.Fatalf("token %q, ListSessions: %v", token, err)
		}
	}
	// Without a client certificate, with a CA that does not vouch for the server, or in
	// plaintext, no call gets through.
	tlsOnly, err := nexuskv.TLSConfigFromFiles(nexuskv.TLSFiles{RootCAFile: path("ca.pem")})
	if err != nil {
		t.Fatal(err)
	}
	wrongCA, err := nexuskv.TLSConfigFromFiles(nexuskv.TLSFiles{RootCAFile: path("other-ca.pem"),
		CertFile: path("client.pem"), KeyFile: path("client.key")})
	if err != nil {
		t.Fatal(err)
	}
	for name, config := range map[string]*tls.Config{"no client certificate": tlsOnly, "wrong CA": wrongCA, "plaintext": nil} {
		c := newClient(t, s, nexuskv.Options{TLS: config, BearerToken: "token-a", Timeout: 10 * time.Second})
		if _, err := c.GetSession(ctx, "chat"); code(err) != codes.Unavailable {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if _, err := nexuskv.TLSConfigFromFiles(nexuskv.TLSFiles{CertFile: path("client.pem")}); err == nil {
		t.Fatal("a certificate without its key was accepted")
	}
}
