// Package testbao is a scripted OpenBao for tests: a CA with a server and a
// client certificate (as files), and an HTTPS server that requires and
// verifies the client certificate and answers login and KV reads from a
// script. Only tests import it.
package testbao

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// PKI is a CA, a server certificate for 127.0.0.1 and a client certificate,
// as files.
type PKI struct {
	Dir        string
	pool       *x509.CertPool
	server     tls.Certificate
	CAFile     string
	ClientCert string
	ClientKey  string
}

// NewPKI makes one in a temporary directory.
func NewPKI(t *testing.T) *PKI {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	ca, _ := x509.ParseCertificate(caDER)
	issue := func(name string, server bool) (tls.Certificate, []byte, []byte) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
		if server {
			tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		} else {
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		}
		der, _ := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		keyDER, _ := x509.MarshalECPrivateKey(key)
		certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
		keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
		pair, _ := tls.X509KeyPair(certPEM, keyPEM)
		return pair, certPEM, keyPEM
	}
	p := &PKI{Dir: dir, pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	p.server, _, _ = issue("server", true)
	_, certPEM, keyPEM := issue("client", false)
	p.CAFile = filepath.Join(dir, "ca.crt")
	p.ClientCert, p.ClientKey = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	_ = os.WriteFile(p.CAFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600)
	_ = os.WriteFile(p.ClientCert, certPEM, 0o600)
	_ = os.WriteFile(p.ClientKey, keyPEM, 0o600)
	return p
}

// Answer is a status and a JSON body.
type Answer struct {
	Status int
	Body   any
}

// Script answers per endpoint ("login", "read") in order; the last repeats.
type Script struct {
	mu      sync.Mutex
	Answers map[string][]Answer
	Calls   map[string]int
	Tokens  []string // X-Vault-Token of each read
	Logins  []string // "JWT ROLE" of each login
}

func (s *Script) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	defer s.mu.Unlock()
	endpoint := "read"
	if strings.HasSuffix(r.URL.Path, "/login") {
		endpoint = "login"
		var login map[string]string
		_ = json.Unmarshal(body, &login)
		s.Logins = append(s.Logins, login["jwt"]+" "+login["role"])
	} else {
		s.Tokens = append(s.Tokens, r.Header.Get("X-Vault-Token"))
	}
	if s.Calls == nil {
		s.Calls = map[string]int{}
	}
	list := s.Answers[endpoint]
	a := list[min(s.Calls[endpoint], len(list)-1)]
	s.Calls[endpoint]++
	data, _ := json.Marshal(a.Body)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(a.Status)
	_, _ = w.Write(data)
}

// Serve starts an mTLS server (client certificate required and verified).
func Serve(t *testing.T, p *PKI, h http.Handler) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{p.server}, ClientCAs: p.pool,
		ClientAuth: tls.RequireAndVerifyClientCert}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.URL
}

// Canned answers.
var (
	LoginOK = Answer{200, map[string]any{"auth": map[string]any{"client_token": "s.test-token", "policies": []string{}}}}
)

// ReadOK answers a KV read with data.
func ReadOK(data map[string]any) Answer {
	return Answer{200, map[string]any{"data": map[string]any{"data": data, "metadata": map[string]any{"version": 1}}}}
}
