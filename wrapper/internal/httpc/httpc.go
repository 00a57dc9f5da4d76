// Package httpc is the wrapper's HTTP/1.1 client for OpenBao: just enough
// HTTP over crypto/tls to log in and read KV secrets, with every byte that may
// be secret (the request's token and body, the whole response) in secret
// buffers. net/http and bufio would copy responses through Go heap buffers
// that nothing can wipe.
//
// What crypto/tls itself keeps: it decrypts each record in place in its own
// heap buffer (Conn.rawInput) before Read copies it out, and those bytes stay
// until overwritten. The sweep before exec (package sweep) zeroes them.
//
// Timeouts follow the Python wrapper's: each network operation may take
// OpTimeout (a server that stops answering is a transient failure), and the
// caller's deadline bounds the whole exchange (a server that answers a byte at
// a time is given up on when it passes: ErrDeadline).
package httpc

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cloudtaser/cloudtaser/wrapper/internal/secmem"
)

// OpTimeout bounds each connect, write and read (requests' timeout=5).
const OpTimeout = 5 * time.Second

// MaxResponse bounds a response (headers and body).
const MaxResponse = 16 << 20

// ErrDeadline: the caller's deadline passed during the exchange.
var ErrDeadline = errors.New("deadline reached")

// Error kinds for classification (the Python wrapper's names, which its users
// see in the error lines).
var (
	ErrConnection     = errors.New("ConnectionError")
	ErrConnectTimeout = errors.New("ConnectTimeout")
	ErrReadTimeout    = errors.New("ReadTimeout")
	ErrProtocol       = errors.New("malformed HTTP answer")
)

// Conn is one TLS connection to a server, reused across requests.
type Conn struct {
	tls      *tls.Conn
	host     string // the Host header
	deadline time.Time
	used     bool // a request was answered on it (so a failure may be a stale keep-alive)
}

// Dial connects to addr (host:port) and completes the TLS handshake, within
// OpTimeout for each step and before deadline.
func Dial(addr, host string, config *tls.Config, deadline time.Time) (*Conn, error) {
	dialer := net.Dialer{Deadline: earliest(time.Now().Add(OpTimeout), deadline)}
	raw, err := dialer.Dial("tcp", addr)
	if err != nil {
		return nil, classify(err, deadline, ErrConnectTimeout)
	}
	c := &Conn{tls: tls.Client(raw, config), host: host, deadline: deadline}
	_ = c.tls.SetDeadline(earliest(time.Now().Add(OpTimeout), deadline))
	if err := c.tls.Handshake(); err != nil {
		_ = raw.Close()
		return nil, classify(err, deadline, ErrReadTimeout)
	}
	return c, nil
}

// Close closes the connection.
func (c *Conn) Close() { _ = c.tls.Close() }

// Reused says whether a request was answered on this connection before.
func (c *Conn) Reused() bool { return c.used }

func earliest(a, b time.Time) time.Time {
	if b.IsZero() || a.Before(b) {
		return a
	}
	return b
}

// classify turns a network error into ErrDeadline (the caller's deadline
// passed), a timeout of its own, a TLS error (returned as it is) or
// ErrConnection.
func classify(err error, deadline time.Time, timeout error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) || isTimeout(err) {
		if !deadline.IsZero() && !time.Now().Before(deadline) {
			return ErrDeadline
		}
		return timeout
	}
	if TLSProblem(err) != "" {
		return err
	}
	return fmt.Errorf("%w: %v", ErrConnection, err)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Request is one HTTP request. Token (X-Vault-Token) and Body may be secret;
// they are copied into a secret buffer only.
type Request struct {
	Method string
	Path   string // already escaped
	Token  []byte
	Body   []byte // JSON; nil for none
}

// Response is an answer: Body is a slice of the caller's buffer.
type Response struct {
	Status int
	Body   []byte
	Close  bool // the server will close the connection
}

// Do sends req and reads the answer into buf (reset first).
func (c *Conn) Do(req Request, buf *secmem.Buffer) (Response, error) {
	if err := c.send(req, buf); err != nil {
		return Response{}, err
	}
	resp, err := c.receive(buf)
	if err == nil {
		c.used = true
	}
	return resp, err
}

func (c *Conn) send(req Request, buf *secmem.Buffer) error {
	buf.Reset()
	parts := []string{req.Method, " ", req.Path, " HTTP/1.1\r\nHost: ", c.host,
		"\r\nUser-Agent: cloudtaser-wrapper\r\nAccept: application/json\r\n"}
	for _, p := range parts {
		if err := buf.AppendString(p); err != nil {
			return err
		}
	}
	if req.Token != nil {
		if err := appendAll(buf, []byte("X-Vault-Token: "), req.Token, []byte("\r\n")); err != nil {
			return err
		}
	}
	if req.Body != nil {
		head := "Content-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(req.Body)) + "\r\n"
		if err := buf.AppendString(head); err != nil {
			return err
		}
	}
	if err := appendAll(buf, []byte("\r\n"), req.Body); err != nil {
		return err
	}
	_ = c.tls.SetWriteDeadline(earliest(time.Now().Add(OpTimeout), c.deadline))
	_, err := c.tls.Write(buf.Bytes())
	buf.Reset()
	if err != nil {
		return classify(err, c.deadline, ErrReadTimeout)
	}
	return nil
}

func appendAll(buf *secmem.Buffer, parts ...[]byte) error {
	for _, p := range parts {
		if err := buf.Append(p); err != nil {
			return err
		}
	}
	return nil
}

// fill reads more bytes into buf (at least one, or an error).
func (c *Conn) fill(buf *secmem.Buffer) error {
	if buf.Len() >= MaxResponse {
		return fmt.Errorf("%w: larger than %d bytes", ErrProtocol, MaxResponse)
	}
	if len(buf.Spare()) < 4096 {
		if err := buf.Grow(buf.Len() + 4096); err != nil {
			return err
		}
	}
	_ = c.tls.SetReadDeadline(earliest(time.Now().Add(OpTimeout), c.deadline))
	n, err := c.tls.Read(buf.Spare())
	buf.Commit(n)
	if n > 0 {
		return nil
	}
	if err == nil {
		return c.fill(buf)
	}
	return classify(err, c.deadline, ErrReadTimeout)
}

func (c *Conn) receive(buf *secmem.Buffer) (Response, error) {
	buf.Reset()
	for {
		end := bytes.Index(buf.Bytes(), []byte("\r\n\r\n"))
		if end < 0 {
			if err := c.fill(buf); err != nil {
				return Response{}, err
			}
			continue
		}
		head := buf.Bytes()[:end+4]
		resp, length, chunked, err := parseHead(head)
		if err != nil {
			return Response{}, err
		}
		if resp.Status >= 100 && resp.Status < 200 { // an interim answer: drop it, read on
			data := buf.Bytes()
			rest := copy(data, data[end+4:])
			buf.Truncate(rest)
			continue
		}
		bodyStart := end + 4
		if chunked {
			n, err := c.dechunk(buf, bodyStart)
			if err != nil {
				return Response{}, err
			}
			resp.Body = buf.Bytes()[bodyStart : bodyStart+n]
			return resp, nil
		}
		if length < 0 { // no length: the body runs to the end of the connection
			resp.Close = true
			for {
				if err := c.fill(buf); err != nil {
					if errors.Is(err, ErrConnection) {
						break
					}
					return Response{}, err
				}
			}
			resp.Body = buf.Bytes()[bodyStart:]
			return resp, nil
		}
		if length > MaxResponse {
			return Response{}, fmt.Errorf("%w: a body of %d bytes", ErrProtocol, length)
		}
		for buf.Len() < bodyStart+length {
			if err := c.fill(buf); err != nil {
				return Response{}, err
			}
		}
		resp.Body = buf.Bytes()[bodyStart : bodyStart+length]
		return resp, nil
	}
}

// parseHead reads the status line and the headers this client needs.
func parseHead(head []byte) (Response, int, bool, error) {
	lines := bytes.Split(head[:len(head)-4], []byte("\r\n"))
	status := lines[0]
	if len(status) < 12 || !bytes.HasPrefix(status, []byte("HTTP/1.")) || status[8] != ' ' {
		return Response{}, 0, false, fmt.Errorf("%w: status line", ErrProtocol)
	}
	code, err := strconv.Atoi(string(status[9:12]))
	if err != nil {
		return Response{}, 0, false, fmt.Errorf("%w: status code", ErrProtocol)
	}
	resp := Response{Status: code, Close: bytes.HasPrefix(status, []byte("HTTP/1.0"))}
	length, chunked := -1, false
	for _, line := range lines[1:] {
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return Response{}, 0, false, fmt.Errorf("%w: header line", ErrProtocol)
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			n, err := strconv.Atoi(string(value))
			if err != nil || n < 0 {
				return Response{}, 0, false, fmt.Errorf("%w: Content-Length", ErrProtocol)
			}
			length = n
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			chunked = bytes.EqualFold(value, []byte("chunked"))
		case bytes.EqualFold(name, []byte("Connection")):
			resp.Close = resp.Close || bytes.EqualFold(value, []byte("close"))
		}
	}
	if code == 204 || code == 304 {
		length = 0
	}
	return resp, length, chunked, nil
}

// dechunk reads a chunked body whose first bytes are at buf[start:], moving
// each chunk's data down so that the body ends up contiguous at buf[start:];
// returns its length. Trailers are read and dropped.
func (c *Conn) dechunk(buf *secmem.Buffer, start int) (int, error) {
	out := start // where the next chunk's data goes
	in := start  // where the next chunk header starts
	for {
		line, next, err := c.line(buf, in)
		if err != nil {
			return 0, err
		}
		sizeText, _, _ := bytes.Cut(line, []byte(";"))
		size, err := strconv.ParseInt(string(bytes.TrimSpace(sizeText)), 16, 64)
		if err != nil || size < 0 || size > MaxResponse {
			return 0, fmt.Errorf("%w: chunk size", ErrProtocol)
		}
		if size == 0 {
			for { // trailers, up to the empty line
				line, next, err = c.line(buf, next)
				if err != nil {
					return 0, err
				}
				if len(line) == 0 {
					// Move the body's end down over the chunk framing and wipe what lies past it.
					buf.Truncate(out)
					return out - start, nil
				}
			}
		}
		for buf.Len() < next+int(size)+2 {
			if err := c.fill(buf); err != nil {
				return 0, err
			}
		}
		data := buf.Bytes()
		copy(data[out:], data[next:next+int(size)])
		out += int(size)
		if data[next+int(size)] != '\r' || data[next+int(size)+1] != '\n' {
			return 0, fmt.Errorf("%w: chunk end", ErrProtocol)
		}
		in = next + int(size) + 2
	}
}

// line returns the CRLF-terminated line starting at buf[i:] (reading more as
// needed) and the index after it.
func (c *Conn) line(buf *secmem.Buffer, i int) ([]byte, int, error) {
	for {
		if j := bytes.Index(buf.Bytes()[i:], []byte("\r\n")); j >= 0 {
			return buf.Bytes()[i : i+j], i + j + 2, nil
		}
		if err := c.fill(buf); err != nil {
			return nil, 0, err
		}
	}
}

// TLSProblem names a TLS failure the way the Python wrapper did, in OpenSSL's
// words (its users see these), or returns "" for an error that is not about TLS.
func TLSProblem(err error) string {
	var unknown x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	var verification *tls.CertificateVerificationError
	var header tls.RecordHeaderError
	switch {
	case errors.As(err, &unknown), errors.As(err, &hostname), errors.As(err, &invalid),
		errors.As(err, &verification):
		return "certificate verify failed"
	case errors.As(err, &header):
		return "wrong version number"
	}
	text := err.Error()
	if _, alert, ok := strings.Cut(text, "remote error: tls: "); ok {
		if name, known := alertNames[alert]; known {
			alert = name
		}
		return "alert " + alert
	}
	if i := strings.Index(text, "tls: "); i >= 0 {
		text = text[i:]
		if len(text) > 120 {
			text = text[:120]
		}
		return text
	}
	return ""
}

// alertNames: Go's words for TLS alerts -> OpenSSL's, as the Python wrapper's
// lines had them.
var alertNames = map[string]string{
	"unknown certificate authority":  "unknown ca",
	"certificate required":           "certificate required",
	"bad certificate":                "bad certificate",
	"handshake failure":              "handshake failure",
	"protocol version not supported": "protocol version",
}
