// Package openbao logs in to OpenBao/Vault with the pod's token over mutual
// TLS and fetches every configured secret, all or nothing.
//
// The first permanent failure (TLS, 403, missing path or key) aborts the whole
// fetch with one line naming the binding, the path and the reason; transient
// failures (connection refused, timeouts, 5xx, sealed, and the one login 403
// that names a Kubernetes API outage: see loginForbidden) are retried with
// exponential backoff and jitter until the deadline, which bounds the whole
// fetch: a server that answers too slowly is given up on when it passes.
// Messages never carry a value or a server's text (a login 403's errors are
// matched against known phrases, never echoed).
//
// Everything secret (the service-account token, the request bodies, every
// answer, the client token, the values) lives in secmem buffers.
package openbao

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/cloudtaser/cloudtaser/wrapper/internal/config"
	"github.com/cloudtaser/cloudtaser/wrapper/internal/httpc"
	"github.com/cloudtaser/cloudtaser/wrapper/internal/jsonscan"
	"github.com/cloudtaser/cloudtaser/wrapper/internal/secmem"
)

// Error is a failed fetch; its message is the line the user sees.
type Error struct {
	Msg       string
	Transient bool // worth another try (until the deadline); exit 75 past it
}

func (e *Error) Error() string { return e.Msg }

func permanent(format string, args ...any) *Error {
	return &Error{Msg: fmt.Sprintf(format, args...)}
}

func transient(format string, args ...any) *Error {
	return &Error{Msg: fmt.Sprintf(format, args...), Transient: true}
}

// Value is one fetched value and the plan of the key it was fetched for.
type Value struct {
	Plan *config.KeyPlan
	Buf  *secmem.Buffer
}

// Fetched holds the values and what the sweep must look for.
type Fetched struct {
	// One per key of the config, in its order: Values[i].Plan.Index == i.
	Values   []Value
	Needles  []*secmem.Buffer // the raw JSON text of escaped values, client tokens
	Attempts int
}

// Free wipes and unmaps every buffer.
func (f *Fetched) Free() {
	if f == nil {
		return
	}
	for _, v := range f.Values {
		v.Buf.Free()
	}
	for _, n := range f.Needles {
		n.Free()
	}
	f.Values, f.Needles = nil, nil
}

// Secrets lists every secret byte string the fetch held: values, their raw
// forms, client tokens (for the sweep).
func (f *Fetched) Secrets() [][]byte {
	var out [][]byte
	for _, v := range f.Values {
		out = append(out, v.Buf.Bytes())
	}
	for _, n := range f.Needles {
		out = append(out, n.Bytes())
	}
	return out
}

// Retry policy: the Python wrapper's (tenacity's wait_exponential_jitter with
// multiplier 0.2, jitter 0.5, max 5 s; no wait that would end past the
// deadline).
const (
	backoffBase   = 0.2
	backoffJitter = 0.5
	backoffMax    = 5.0
)

func backoff(attempt int) time.Duration {
	wait := backoffBase*math.Pow(2, float64(attempt-1)) + rand.Float64()*backoffJitter
	return time.Duration(math.Min(wait, backoffMax) * float64(time.Second))
}

// seconds formats a deadline as the Python wrapper did ("{:.0f}").
func seconds(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', 0, 64)
}

// FetchAll fetches every secret of every source within deadline, or returns
// an *Error.
func FetchAll(cfg *config.Config, jwt []byte, deadline time.Duration, log func(string)) (*Fetched, error) {
	start := time.Now()
	hard := start.Add(deadline)
	out := &Fetched{}
	plans := cfg.Plans()
	var last *Error
	for attempt := 1; ; attempt++ {
		out.Attempts = attempt
		out.Free() // a failed attempt's partial results
		inFlight := ""
		err := fetchOnce(cfg, plans, jwt, hard, out, &inFlight)
		if err == nil {
			return out, nil
		}
		out.Free()
		if errors.Is(err, httpc.ErrDeadline) || (err == errExpired) {
			if inFlight != "" {
				return nil, transient("%s: no complete answer within the %ss deadline (too slow) after %d attempt(s)",
					inFlight, seconds(deadline), attempt)
			}
			reason := "unreachable"
			if last != nil {
				reason = last.Msg
			}
			return nil, transient("%s — deadline of %ss reached after %d attempt(s)", reason, seconds(deadline), attempt)
		}
		var e *Error
		if !errors.As(err, &e) {
			return nil, permanent("internal error (%T)", err)
		}
		if !e.Transient {
			return nil, e
		}
		last = e
		wait := backoff(attempt)
		// An attempt needs some time of its own: one started at the deadline's edge (the
		// sleep overran on a loaded node) would end "too slow" when the server is simply
		// unreachable.
		if time.Since(start)+wait+minAttempt >= deadline {
			return nil, transient("%s — gave up after %d attempts within %ss", e.Msg, attempt, seconds(deadline))
		}
		log("retrying after " + e.Msg)
		time.Sleep(wait)
		if time.Until(hard) < minAttempt {
			return nil, transient("%s — gave up after %d attempts within %ss", e.Msg, attempt, seconds(deadline))
		}
	}
}

// minAttempt is the least time left for which another attempt is started.
const minAttempt = 200 * time.Millisecond

var errExpired = errors.New("deadline reached between requests")

// fetchOnce fetches every key of plans (cfg.Plans()), source by source and secret by
// secret, so that out.Values are in the config's order.
func fetchOnce(cfg *config.Config, plans []*config.KeyPlan, jwt []byte, hard time.Time,
	out *Fetched, inFlight *string) error {
	for i := range cfg.Sources {
		if !time.Now().Before(hard) {
			return errExpired
		}
		if err := fetchSource(&cfg.Sources[i], plans, jwt, hard, out, inFlight); err != nil {
			return err
		}
	}
	return nil
}

// session is one source's connection and client token.
type session struct {
	src    *config.Source
	addr   string // host:port to dial
	host   string // the Host header
	tls    *tls.Config
	hard   time.Time
	conn   *httpc.Conn
	answer *secmem.Buffer
}

func (s *session) close() {
	if s.conn != nil {
		s.conn.Close()
	}
	s.answer.Free()
}

// do sends req, redialling once when a kept-alive connection turns out closed.
func (s *session) do(req httpc.Request) (httpc.Response, error) {
	for try := 0; ; try++ {
		if s.conn == nil {
			conn, err := httpc.Dial(s.addr, s.host, s.tls, s.hard)
			if err != nil {
				return httpc.Response{}, err
			}
			s.conn = conn
		}
		reused := s.conn.Reused()
		resp, err := s.conn.Do(req, s.answer)
		if err != nil || resp.Close {
			s.conn.Close()
			s.conn = nil
		}
		if err != nil && reused && try == 0 && errors.Is(err, httpc.ErrConnection) {
			continue // the server closed an idle connection: one new one
		}
		return resp, err
	}
}

func fetchSource(src *config.Source, plans []*config.KeyPlan, jwt []byte, hard time.Time,
	out *Fetched, inFlight *string) error {
	where := fmt.Sprintf("binding %s: login to %s (role %s)", src.Binding, src.Address, src.Role)
	s, err := newSession(src, hard)
	if err != nil {
		return err
	}
	defer s.close()
	*inFlight = where
	token, err := s.login(jwt, where)
	if err != nil {
		return err
	}
	out.Needles = append(out.Needles, token)
	for i := range src.Secrets {
		secret := &src.Secrets[i]
		where = fmt.Sprintf("binding %s: %s/%s", src.Binding, secret.Mount, secret.Path)
		*inFlight = where
		if err := s.read(secret, plans, token.Bytes(), where, out); err != nil {
			return err
		}
	}
	*inFlight = ""
	return nil
}

func readable(path, what string, src *config.Source) error {
	if info, err := os.Stat(path); err != nil || !info.Mode().IsRegular() {
		return permanent("%s %s of binding %s is not a readable file", what, path, src.Binding)
	}
	if f, err := os.Open(path); err != nil {
		return permanent("%s %s of binding %s is not a readable file", what, path, src.Binding)
	} else {
		_ = f.Close()
	}
	return nil
}

func newSession(src *config.Source, hard time.Time) (*session, error) {
	for _, file := range []struct{ path, what string }{
		{src.CAFile, "CA file"}, {src.ClientCertFile, "client certificate"}, {src.ClientKeyFile, "client key"},
	} {
		if file.path != "" {
			if err := readable(file.path, file.what, src); err != nil {
				return nil, err
			}
		}
	}
	u, err := url.Parse(src.Address)
	if err != nil || u.Host == "" {
		return nil, permanent("binding %s: address %s is not a URL", src.Binding, src.Address)
	}
	if u.Scheme != "https" {
		return nil, permanent("binding %s: address %s is not https:// (the wrapper talks to OpenBao "+
			"only over mutual TLS)", src.Binding, src.Address)
	}
	port := u.Port()
	if port == "" {
		port = "443"
	}
	config := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: u.Hostname()}
	if src.ServerName != "" {
		config.ServerName = src.ServerName
	}
	if src.CAFile != "" {
		pem, err := os.ReadFile(src.CAFile)
		if err != nil {
			return nil, permanent("CA file %s of binding %s is not a readable file", src.CAFile, src.Binding)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, permanent("CA file %s of binding %s holds no PEM certificate", src.CAFile, src.Binding)
		}
		config.RootCAs = pool
	}
	pair, err := tls.LoadX509KeyPair(src.ClientCertFile, src.ClientKeyFile)
	if err != nil {
		return nil, permanent("client certificate %s and key %s of binding %s do not load as a pair",
			src.ClientCertFile, src.ClientKeyFile, src.Binding)
	}
	config.Certificates = []tls.Certificate{pair}
	answer, err := secmem.New(16 << 10)
	if err != nil {
		return nil, permanent("binding %s: %v", src.Binding, err)
	}
	return &session{src: src, addr: net.JoinHostPort(u.Hostname(), port), host: u.Host,
		tls: config, hard: hard, answer: answer}, nil
}

// login returns the client token (in a buffer of its own).
func (s *session) login(jwt []byte, where string) (*secmem.Buffer, error) {
	role, _ := json.Marshal(s.src.Role) // a name, not a secret
	body, err := secmem.New(len(jwt) + len(role) + 32)
	if err != nil {
		return nil, permanent("%s: %v", where, err)
	}
	defer body.Free()
	for _, part := range [][]byte{[]byte(`{"jwt":"`), jwt, []byte(`","role":`), role, []byte(`}`)} {
		if err := body.Append(part); err != nil {
			return nil, permanent("%s: %v", where, err)
		}
	}
	resp, err := s.do(httpc.Request{Method: "POST", Path: "/v1/auth/" + escapePath(s.src.AuthMount) + "/login",
		Body: body.Bytes()})
	if err != nil {
		return nil, transport(err, where)
	}
	if resp.Status != 200 {
		return nil, status(resp, where, true)
	}
	raw, ok := lookup(resp.Body, "auth", "client_token")
	if !ok || !jsonscan.IsString(raw) {
		return nil, permanent("%s: the answer holds no client token", where)
	}
	token, err := secmem.New(len(raw))
	if err == nil {
		err = jsonscan.Unquote(raw, token)
	}
	if err != nil {
		token.Free()
		return nil, permanent("%s: %v", where, err)
	}
	return token, nil
}

func lookup(body []byte, path ...string) ([]byte, bool) {
	if !jsonscan.Valid(body) {
		return nil, false
	}
	return jsonscan.Lookup(body, path...)
}

// read fetches secret and takes from it the key of each of plans that is one of its keys.
func (s *session) read(secret *config.Secret, plans []*config.KeyPlan, token []byte, where string,
	out *Fetched) error {
	resp, err := s.do(httpc.Request{Method: "GET",
		Path: "/v1/" + escapePath(secret.Mount) + "/data/" + escapePath(secret.Path), Token: token})
	if err != nil {
		return transport(err, where)
	}
	if resp.Status != 200 {
		return status(resp, where, false)
	}
	if !jsonscan.Valid(resp.Body) {
		return permanent("%s: the answer is not JSON", where)
	}
	data, ok := jsonscan.Lookup(resp.Body, "data", "data")
	if !ok || jsonscan.IsNull(data) {
		data = []byte("{}")
	}
	for _, plan := range plans {
		if plan.Secret != secret {
			continue
		}
		key := plan.Key
		var raw []byte
		found := false
		if err := jsonscan.Members(data, func(k, v []byte) bool {
			if jsonscan.KeyIs(k, key.Key) {
				raw, found = v, true
			}
			return true
		}); err != nil {
			return permanent("%s: the answer's data is not an object", where)
		}
		if !found {
			return permanent("%s: key '%s' is missing from the secret", where, key.Key)
		}
		if !jsonscan.IsString(raw) {
			return permanent("%s: key '%s' is not a string", where, key.Key)
		}
		value, err := secmem.New(len(raw))
		if err == nil {
			err = jsonscan.Unquote(raw, value)
		}
		if err != nil {
			value.Free()
			return permanent("%s: key '%s': %v", where, key.Key, err)
		}
		out.Values = append(out.Values, Value{Plan: plan, Buf: value})
		// The raw JSON text differs from the value where it holds escapes: the
		// sweep looks for that form too (it is what crypto/tls decrypted).
		if quoted := raw[1 : len(raw)-1]; !bytes.Equal(quoted, value.Bytes()) {
			needle, err := secmem.From(quoted)
			if err != nil {
				return permanent("%s: %v", where, err)
			}
			out.Needles = append(out.Needles, needle)
		}
	}
	return nil
}

// escapePath percent-encodes what may not appear in a URL path as it is.
func escapePath(p string) string {
	const keep = "-._~/!$&'()*+,;=:@"
	var b []byte
	for i := 0; i < len(p); i++ {
		c := p[i]
		if (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
			bytes.IndexByte([]byte(keep), c) >= 0 {
			b = append(b, c)
			continue
		}
		b = append(b, '%', "0123456789ABCDEF"[c>>4], "0123456789ABCDEF"[c&15])
	}
	return string(b)
}
