package httpc

import (
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/cloudtaser/cloudtaser/wrapper/internal/secmem"
)

func dial(t *testing.T, srv *httptest.Server) *Conn {
	t.Helper()
	host := strings.TrimPrefix(srv.URL, "https://")
	config := &tls.Config{RootCAs: srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs, ServerName: "127.0.0.1"}
	c, err := Dial(host, host, config, time.Now().Add(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestChunkedAndKeptAlive(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Vault-Token") != "tok" || r.Header.Get("Content-Length") != "" {
			w.WriteHeader(400)
			return
		}
		for _, part := range []string{`{"data": `, strings.Repeat("x", 9000), `"end"}`} {
			_, _ = w.Write([]byte(part))
			w.(http.Flusher).Flush() // each part its own chunk
		}
	}))
	defer srv.Close()
	c := dial(t, srv)
	buf, _ := secmem.New(64)
	defer buf.Free()
	for i := 0; i < 2; i++ { // the second request on the same connection
		resp, err := c.Do(Request{Method: "GET", Path: "/v1/x", Token: []byte("tok")}, buf)
		if err != nil {
			t.Fatal(err)
		}
		want := `{"data": ` + strings.Repeat("x", 9000) + `"end"}`
		if resp.Status != 200 || string(resp.Body) != want {
			t.Fatalf("response %d, %d bytes", resp.Status, len(resp.Body))
		}
		if buf.Len() != len(resp.Body)+strings.Index(string(buf.Bytes()), "\r\n\r\n")+4 {
			t.Fatal("the chunk framing was left after the body")
		}
	}
	if !c.Reused() {
		t.Fatal("not reused")
	}
}

func TestABodyThatRunsToTheEndOfTheConnection(t *testing.T) {
	certs := httptest.NewTLSServer(nil) // only for its certificate and the pool that trusts it
	defer certs.Close()
	l, err := tls.Listen("tcp", "127.0.0.1:0", certs.TLS)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		buf := make([]byte, 4096)
		_, _ = conn.Read(buf)
		_, _ = conn.Write([]byte("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"a\": 1}"))
		conn.Close()
	}()
	config := &tls.Config{RootCAs: certs.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs,
		ServerName: "127.0.0.1"}
	c, err := Dial(l.Addr().String(), "x", config, time.Now().Add(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf, _ := secmem.New(64)
	defer buf.Free()
	resp, err := c.Do(Request{Method: "GET", Path: "/"}, buf)
	if err != nil || string(resp.Body) != `{"a": 1}` || !resp.Close {
		t.Fatalf("Do = %+v, %v", resp, err)
	}
}

func TestTheOperationTimeoutAndTheDeadline(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	start := time.Now()
	_, err := Dial(l.Addr().String(), "x", &tls.Config{ServerName: "x"}, time.Now().Add(300*time.Millisecond))
	if err != ErrDeadline || time.Since(start) > time.Second {
		t.Fatalf("Dial = %v after %v", err, time.Since(start))
	}
}
