package openbao

import (
	"bytes"
	"errors"

	"github.com/cloudtaser/cloudtaser/wrapper/internal/httpc"
	"github.com/cloudtaser/cloudtaser/wrapper/internal/jsonscan"
	"github.com/cloudtaser/cloudtaser/wrapper/internal/secmem"
)

// transport translates a failed exchange into the line the user sees (the
// Python wrapper's words: requests' exception names).
func transport(err error, where string) error {
	switch {
	case errors.Is(err, httpc.ErrDeadline):
		return err
	case httpc.TLSProblem(err) != "":
		return permanent("%s: TLS failure (%s)", where, httpc.TLSProblem(err))
	case errors.Is(err, httpc.ErrConnectTimeout):
		return transient("%s: unreachable (ConnectTimeout)", where)
	case errors.Is(err, httpc.ErrReadTimeout):
		return transient("%s: unreachable (ReadTimeout)", where)
	case errors.Is(err, httpc.ErrConnection):
		return transient("%s: unreachable (ConnectionError)", where)
	case errors.Is(err, httpc.ErrProtocol):
		return permanent("%s: not an HTTP/1.1 answer", where)
	case errors.Is(err, secmem.ErrLimit):
		return permanent("%s: %v", where, err)
	}
	return permanent("%s: %v", where, err) // our own errors (buffers): no server text, no value
}

// statuses: hvac's exception per status, as the Python wrapper's lines named
// them, and whether another try may help.
var statuses = map[int]struct {
	what      string
	transient bool
}{
	400: {"request refused (HTTP 400; check role and auth mount)", false},
	401: {"Unauthorized", false},
	403: {"permission denied", false},
	404: {"no secret at this path", false},
	405: {"UnsupportedOperation", false},
	412: {"PreconditionFailed", false},
	429: {"server unavailable (RateLimitExceeded)", true},
	500: {"server unavailable (InternalServerError)", true},
	501: {"VaultNotInitialized", false},
	502: {"server unavailable (BadGateway)", true},
	503: {"server unavailable (VaultDown)", true},
	504: {"server unavailable (GatewayTimeout)", true},
}

// status translates an answer other than 200; a login's 403 is explained.
func status(resp httpc.Response, where string, login bool) error {
	if resp.Status == 403 && login {
		return loginForbidden(resp.Body, where)
	}
	known, ok := statuses[resp.Status]
	switch {
	case !ok:
		return permanent("%s: UnexpectedError (HTTP %d)", where, resp.Status)
	case known.transient:
		return transient("%s: %s", where, known.what)
	}
	return permanent("%s: %s", where, known.what)
}

// What OpenBao's errors say when a namespace lookup failed on the transport.
var transportMarkers = [][]byte{
	[]byte("dial tcp"), []byte("connection refused"), []byte("i/o timeout"), []byte("no such host"),
	[]byte("connection reset"), []byte("tls handshake timeout"), []byte("context deadline exceeded"),
	[]byte("(code 500"), []byte("(code 502"), []byte("(code 503"), []byte("(code 504"),
}

// loginForbidden explains a 403 from the Kubernetes auth login by fixed
// phrases (the server's text is matched, never echoed: it names hosts and
// URLs). What OpenBao (2.4, builtin/credential/kubernetes/path_login.go)
// answers, reproduced against a dev server whose kubernetes_host is dead:
//   - the TokenReview fails for any reason (bad or revoked token, or the
//     Kubernetes API unreachable): a bare "permission denied", so an API server
//     outage cannot be told from a refused token: permanent, with a hint;
//   - a role with a namespace selector whose namespace lookup could not reach
//     the API: 'namespace not authorized err=Get "https://…": dial tcp …:
//     connect: connection refused': an outage, told apart: transient;
//   - an expired token: "invalid expiration time (exp) claim: token is expired".
func loginForbidden(body []byte, where string) error {
	text, err := secmem.New(len(body))
	if err != nil {
		return permanent("%s: permission denied", where)
	}
	defer text.Free()
	if raw, ok := lookup(body, "errors"); ok {
		_ = jsonscan.Elements(raw, func(v []byte) bool {
			if jsonscan.IsString(v) {
				_ = jsonscan.Unquote(v, text)
				_ = text.AppendString(" ")
			}
			return true
		})
	}
	lower := text.Bytes()
	for i, c := range lower {
		if c >= 'A' && c <= 'Z' {
			lower[i] = c + 'a' - 'A'
		}
	}
	namespace := bytes.Contains(lower, []byte("namespace not authorized err="))
	outage := false
	for _, m := range transportMarkers {
		outage = outage || bytes.Contains(lower, m)
	}
	switch {
	case namespace && outage:
		return transient("%s: permission denied because OpenBao could not reach the Kubernetes API "+
			"to check the role's namespace selector", where)
	case namespace:
		return permanent("%s: permission denied (OpenBao could not check the role's namespace "+
			"selector; can its token reviewer read namespaces?)", where)
	case bytes.Contains(lower, []byte("expired")):
		return permanent("%s: permission denied (the service-account token has expired)", where)
	case bytes.Contains(lower, []byte("not authorized")):
		return permanent("%s: permission denied (the service account or its namespace is not "+
			"bound to the role)", where)
	}
	return permanent("%s: permission denied (the token was refused; OpenBao answers the same when "+
		"it cannot reach the Kubernetes API to review the token)", where)
}
