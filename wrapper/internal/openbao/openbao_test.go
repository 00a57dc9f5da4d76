package openbao

import (
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/cloudtaser/cloudtaser/wrapper/internal/config"
	"github.com/cloudtaser/cloudtaser/wrapper/internal/httpc"
	"github.com/cloudtaser/cloudtaser/wrapper/internal/testbao"
)

func cfgFor(p *testbao.PKI, address string) *config.Config {
	return &config.Config{Namespace: "ns", Container: "app", TokenPath: "/t",
		Sources: []config.Source{{Binding: "ns/b", Address: address, AuthMount: "kubernetes", Role: "r",
			CAFile: p.CAFile, ClientCertFile: p.ClientCert, ClientKeyFile: p.ClientKey,
			Secrets: []config.Secret{{Mount: "secret", Path: "p", Keys: []config.Key{{Key: "a", Env: "A"}}}}}},
		Agent: config.Agent{Socket: "/nope"}}
}

type answer = testbao.Answer

func reply(status int, body any) answer { return answer{Status: status, Body: body} }

type script = testbao.Script

var (
	loginOK = testbao.LoginOK
	readOK  = testbao.ReadOK(map[string]any{"a": "value-of-a \"quoted\""})
)

func fetch(t *testing.T, s *script, deadline time.Duration) (*Fetched, []string, time.Duration, error) {
	t.Helper()
	p := testbao.NewPKI(t)
	url := testbao.Serve(t, p, s)
	var logged []string
	start := time.Now()
	f, err := FetchAll(cfgFor(p, url), []byte("jwt-of-the-pod"), deadline, func(m string) { logged = append(logged, m) })
	return f, logged, time.Since(start), err
}

func TestTheValuesArriveOverMutualTLS(t *testing.T) {
	s := &script{Answers: map[string][]answer{"login": {loginOK}, "read": {readOK}}}
	f, logged, _, err := fetch(t, s, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Free()
	if len(f.Values) != 1 || f.Values[0].Plan.Key.Key != "a" ||
		f.Values[0].Plan.Source.Binding != "ns/b" ||
		string(f.Values[0].Buf.Bytes()) != `value-of-a "quoted"` || len(logged) != 0 {
		t.Fatalf("values %v, logged %q", f.Values, logged)
	}
	if s.Tokens[0] != "s.test-token" || s.Logins[0] != "jwt-of-the-pod r" {
		t.Fatalf("the server saw token %q and login %q", s.Tokens, s.Logins)
	}
	// needles: the client token and the raw (escaped) form of the value
	raw := map[string]bool{}
	for _, n := range f.Needles {
		raw[string(n.Bytes())] = true
	}
	if !raw["s.test-token"] || !raw[`value-of-a \"quoted\"`] {
		t.Fatalf("needles %v", raw)
	}
}

// Each value carries the plan of the key it was fetched for (pointers into the config), in
// the config's order; a key the config names twice is fetched for each of its plans.
func TestEachValueCarriesThePlanOfItsKey(t *testing.T) {
	s := &script{Answers: map[string][]answer{"login": {loginOK}, "read": {
		testbao.ReadOK(map[string]any{"a": "p-a", "b": "p-b"}),
		testbao.ReadOK(map[string]any{"a": "q-a"})}}}
	p := testbao.NewPKI(t)
	cfg := cfgFor(p, testbao.Serve(t, p, s))
	cfg.Sources[0].Secrets = []config.Secret{
		{Mount: "secret", Path: "p", Keys: []config.Key{
			{Key: "a", Env: "A"}, {Key: "b", SDK: "b"}, {Key: "a", File: "/a"}}},
		{Mount: "secret", Path: "q", Keys: []config.Key{{Key: "a", SDK: "qa"}}}}
	f, err := FetchAll(cfg, []byte("jwt"), 20*time.Second, func(string) {})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Free()
	want := []struct {
		secret, key int
		value       string
	}{{0, 0, "p-a"}, {0, 1, "p-b"}, {0, 2, "p-a"}, {1, 0, "q-a"}}
	if len(f.Values) != len(want) {
		t.Fatalf("%d values, want %d", len(f.Values), len(want))
	}
	for i, w := range want {
		v, secret := f.Values[i], &cfg.Sources[0].Secrets[w.secret]
		if v.Plan.Index != i || v.Plan.Source != &cfg.Sources[0] || v.Plan.Secret != secret ||
			v.Plan.Key != &secret.Keys[w.key] || string(v.Buf.Bytes()) != w.value {
			t.Fatalf("value %d: plan %+v, %q; want secret %d key %d, %q", i, *v.Plan, v.Buf.Bytes(),
				w.secret, w.key, w.value)
		}
	}
}

func TestFivexxIsRetriedUntilItSucceeds(t *testing.T) {
	s := &script{Answers: map[string][]answer{
		"login": {reply(503, map[string]any{"errors": []string{"Vault is sealed"}}), reply(500, map[string]any{"errors": []string{"boom"}}), loginOK},
		"read":  {reply(502, map[string]any{"errors": []string{"bad gateway"}}), readOK}}}
	f, logged, _, err := fetch(t, s, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Free()
	var tails []string
	for _, l := range logged {
		tails = append(tails, l[strings.LastIndex(l, ": ")+2:])
	}
	want := "server unavailable (VaultDown)|server unavailable (InternalServerError)|server unavailable (BadGateway)"
	if f.Attempts != 4 || s.Calls["login"] != 4 || s.Calls["read"] != 2 || strings.Join(tails, "|") != want {
		t.Fatalf("attempts %d, calls %v, logged %q", f.Attempts, s.Calls, logged)
	}
}

func TestPermanentFailuresAreNotRetried(t *testing.T) {
	denied := reply(403, map[string]any{"errors": []string{"permission denied"}})
	for name, c := range map[string]struct {
		login, read answer
		message     string
	}{
		"login-403": {denied, readOK, "login to https://127.0.0.1:"},
		"read-403":  {loginOK, denied, "binding ns/b: secret/p: permission denied"},
		"read-404":  {loginOK, reply(404, map[string]any{"errors": []string{}}), "secret/p: no secret at this path"},
		"login-400": {reply(400, map[string]any{"errors": []string{"invalid role name"}}), readOK, "request refused (HTTP 400; check role and auth mount)"},
		"missing-key": {loginOK, reply(200, map[string]any{"data": map[string]any{"data": map[string]any{"b": "x"}}}),
			"secret/p: key 'a' is missing from the secret"},
		"not-a-string": {loginOK, reply(200, map[string]any{"data": map[string]any{"data": map[string]any{"a": 5}}}),
			"secret/p: key 'a' is not a string"},
	} {
		t.Run(name, func(t *testing.T) {
			s := &script{Answers: map[string][]answer{"login": {c.login}, "read": {c.read}}}
			_, logged, took, err := fetch(t, s, 20*time.Second)
			var e *Error
			if !errors.As(err, &e) || e.Transient || !strings.Contains(e.Msg, c.message) {
				t.Fatalf("FetchAll = %v, want %q", err, c.message)
			}
			if s.Calls["login"] != 1 || len(logged) != 0 || took > 5*time.Second {
				t.Fatalf("calls %v, logged %q, took %v", s.Calls, logged, took)
			}
		})
	}
}

// Verbatim from a dev OpenBao 2.4 whose kubernetes_host was a dead port.
const namespaceUnreachable = `namespace not authorized err=Get "https://127.0.0.1:1/api/v1/namespaces/cloudtaser-demo": dial tcp 127.0.0.1:1: connect: connection refused`
const namespaceRBAC = `namespace not authorized err=failed to get namespace (code 403 status namespaces "cloudtaser-demo" is forbidden: User "system:serviceaccount:cloudtaser-system:openbao-token-reviewer" cannot get resource "namespaces" in API group "" in the namespace "cloudtaser-demo")`

func TestALogin403IsExplainedAndOnlyAnOutageIsRetried(t *testing.T) {
	const where = "binding ns/b: login to https://bao:8200 (role r)"
	for name, c := range map[string]struct {
		errors    string
		transient bool
		phrase    string
	}{
		"review-failed-or-api-down":   {"permission denied", false, "permission denied (the token was refused; OpenBao answers the same when it cannot reach the Kubernetes API"},
		"namespace-selector-api-down": {namespaceUnreachable, true, "could not reach the Kubernetes API to check the role's namespace selector"},
		"namespace-selector-rbac":     {namespaceRBAC, false, "can its token reviewer read namespaces?"},
		"expired-token":               {"invalid expiration time (exp) claim: token is expired", false, "(the service-account token has expired)"},
		"wrong-service-account":       {"service account name not authorized", false, "is not bound to the role"},
	} {
		t.Run(name, func(t *testing.T) {
			body, _ := json.Marshal(map[string]any{"errors": []string{c.errors}})
			err := loginForbidden(body, where).(*Error)
			if err.Transient != c.transient || !strings.HasPrefix(err.Msg, where+": permission denied") ||
				!strings.Contains(err.Msg, c.phrase) {
				t.Fatalf("loginForbidden = %+v", err)
			}
			for _, leaked := range []string{"127.0.0.1", "https://127", "system:serviceaccount", "dial tcp"} {
				if strings.Contains(strings.TrimPrefix(err.Msg, where), leaked) {
					t.Fatalf("%q echoes the server's text (%s)", err.Msg, leaked)
				}
			}
		})
	}
	// A KV read's 403 is a plain permission denied, whatever it says.
	if err := status(httpcResponse(403, namespaceUnreachable), "binding ns/b: secret/p", false); err.Error() != "binding ns/b: secret/p: permission denied" {
		t.Fatalf("status = %v", err)
	}
}

func TestAnAPIServerOutageBehindANamespaceSelectorIsRetriedUntilTheDeadline(t *testing.T) {
	s := &script{Answers: map[string][]answer{"login": {reply(403, map[string]any{"errors": []string{namespaceUnreachable}})}, "read": {readOK}}}
	_, logged, took, err := fetch(t, s, 2*time.Second)
	var e *Error
	if !errors.As(err, &e) || !e.Transient || !strings.Contains(e.Msg, "could not reach the Kubernetes API") ||
		!strings.Contains(e.Msg, "gave up after") {
		t.Fatalf("FetchAll = %v", err)
	}
	if s.Calls["login"] < 2 || len(logged) != s.Calls["login"]-1 || took > 2*time.Second+time.Second {
		t.Fatalf("calls %v, logged %d, took %v", s.Calls, len(logged), took)
	}
}

func TestAnOutageThatEndsWithinTheDeadlineIsRiddenOut(t *testing.T) {
	outage := reply(403, map[string]any{"errors": []string{namespaceUnreachable}})
	s := &script{Answers: map[string][]answer{"login": {outage, outage, loginOK}, "read": {readOK}}}
	f, _, _, err := fetch(t, s, 20*time.Second)
	if err != nil || f.Attempts != 3 {
		t.Fatalf("FetchAll = %v, %v", f, err)
	}
	f.Free()
}

// A server that accepts and never answers: the deadline bounds the whole
// fetch, not only the retries (without it: the 5 s operation timeout, then
// retries).
func TestAServerThatNeverAnswersFailsAtTheDeadline(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var held []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	p := testbao.NewPKI(t)
	address := "https://" + l.Addr().String()
	start := time.Now()
	_, err = FetchAll(cfgFor(p, address), []byte("jwt"), time.Second, func(string) {})
	took := time.Since(start)
	want := "binding ns/b: login to " + address + " (role r): no complete answer within the 1s deadline (too slow) after 1 attempt(s)"
	if err == nil || err.Error() != want || !err.(*Error).Transient {
		t.Fatalf("FetchAll = %v\nwant %s", err, want)
	}
	if took > 2*time.Second {
		t.Fatalf("took %v", took)
	}
}

func TestTLSFailuresArePermanentAndNamed(t *testing.T) {
	p := testbao.NewPKI(t)
	stranger := testbao.NewPKI(t)
	url := testbao.Serve(t, p, &script{Answers: map[string][]answer{"login": {loginOK}, "read": {readOK}}})
	for name, c := range map[string]struct {
		change func(*config.Source)
		want   string
	}{
		"wrong CA":                   {func(s *config.Source) { s.CAFile = stranger.CAFile }, "TLS failure (certificate verify failed)"},
		"name mismatch":              {func(s *config.Source) { s.ServerName = "bao.elsewhere" }, "TLS failure (certificate verify failed)"},
		"client cert of other CA":    {func(s *config.Source) { s.ClientCertFile, s.ClientKeyFile = stranger.ClientCert, stranger.ClientKey }, "TLS failure (alert "},
		"plain http":                 {func(s *config.Source) { s.Address = strings.Replace(url, "https", "http", 1) }, "is not https://"},
		"no client certificate file": {func(s *config.Source) { s.ClientCertFile = "/nonexistent/tls.crt" }, "client certificate /nonexistent/tls.crt of binding ns/b is not a readable file"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := cfgFor(p, url)
			c.change(&cfg.Sources[0])
			_, err := FetchAll(cfg, []byte("jwt"), 10*time.Second, func(string) {})
			var e *Error
			if !errors.As(err, &e) || e.Transient || !strings.Contains(e.Msg, c.want) {
				t.Fatalf("FetchAll = %v, want %q", err, c.want)
			}
		})
	}
}

func TestUnreachableIsTransient(t *testing.T) {
	p := testbao.NewPKI(t)
	_, err := FetchAll(cfgFor(p, "https://127.0.0.1:1"), []byte("jwt"), 1500*time.Millisecond, func(string) {})
	if err == nil || !strings.Contains(err.Error(), "unreachable (ConnectionError) — gave up after") || !err.(*Error).Transient {
		t.Fatalf("FetchAll = %v", err)
	}
}

func httpcResponse(code int, errorText string) httpc.Response {
	body, _ := json.Marshal(map[string]any{"errors": []string{errorText}})
	return httpc.Response{Status: code, Body: body}
}
