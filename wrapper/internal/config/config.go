// Package config reads the wrapper config (CLOUDTASER_CONFIG): the engine's
// WrapperConfig as JSON, whose schema is config.schema in
// contracts/wrapper-contract.json. Names and paths only, never a secret, so
// ordinary Go strings are fine here.
//
// Validation follows the schema strictly (types as JSON has them, unknown
// members refused) and reports the first problem exactly as the engine's
// pydantic model does, as "FIELD.PATH: message": fields in model order, each
// one depth first, unknown members after the known ones. The contract's
// "config" vectors hold both implementations to that.
package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"strings"
)

// Config is one container's wrapper configuration.
type Config struct {
	Version          int
	Namespace        string
	Container        string
	TokenPath        string
	Sources          []Source
	RefreshSeconds   int // 0: no refresher
	RequireSecretMem bool
	Agent            Agent
}

// Source is one binding's OpenBao/Vault connection and what to fetch through it.
type Source struct {
	Binding        string
	Address        string
	AuthMount      string
	Role           string
	CAFile         string // "" : the system trust store
	ServerName     string // "" : the address's host
	ClientCertFile string
	ClientKeyFile  string
	Secrets        []Secret
}

// Secret is one KV v2 secret to read.
type Secret struct {
	Mount string
	Path  string
	Keys  []Key
}

// Key is one key to deliver; an empty delivery is not asked for.
type Key struct {
	Key  string
	Env  string
	File string
	SDK  string
}

// KeyPlan is one key of a config where it sits: the key (the engine's KeyPlan)
// and the source and secret it is read from. A fetched value carries the plan
// it was fetched for, and a delivery the plan of the value it holds: pointers
// into the Config, which nothing changes after Parse. Index is the key's place
// in the config's order (sources, their secrets, their keys), the same in
// every process that parses the same text: the refresher, a process of its
// own, names keys by it.
type KeyPlan struct {
	Index  int
	Source *Source
	Secret *Secret
	Key    *Key
}

// Plans is every key of c, in the config's order (Plans()[i].Index == i); new
// plans on each call (a fetched value's plan is the one its fetch made).
func (c *Config) Plans() []*KeyPlan {
	var out []*KeyPlan
	for i := range c.Sources {
		src := &c.Sources[i]
		for j := range src.Secrets {
			secret := &src.Secrets[j]
			for k := range secret.Keys {
				out = append(out, &KeyPlan{Index: len(out), Source: src, Secret: secret, Key: &secret.Keys[k]})
			}
		}
	}
	return out
}

// Agent is how the wrapper registers with the node agent.
type Agent struct {
	Socket   string
	Required bool
}

// MaxRefreshSeconds caps refreshSeconds (68 years: never, in practice).
const MaxRefreshSeconds = 1<<31 - 1

// Problem is the first thing wrong with a config.
type Problem struct {
	Path    string
	Message string
}

func (p *Problem) Error() string { return p.Path + ": " + p.Message }

// Parse validates raw and returns the config, or a *Problem.
func Parse(raw []byte) (*Config, error) {
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.UseNumber()
	doc, err := decode(dec)
	if err == nil {
		if _, err2 := dec.Token(); err2 != io.EOF {
			err = errors.New("trailing characters after the document")
		}
	}
	if err != nil {
		return nil, &Problem{"(document)", "invalid JSON: " + err.Error()}
	}
	c := &Config{}
	if p := wrapperConfig(doc, nil, c); p != nil {
		return nil, p
	}
	return c, nil
}

// --- an ordered JSON tree (objects keep their members' order; the last of
// duplicate members wins, as in the engine's parser) ---------------------------

type member struct {
	name  string
	value any
}

type object []member

func (o object) get(name string) (any, bool) {
	for i := len(o) - 1; i >= 0; i-- {
		if o[i].name == name {
			return o[i].value, true
		}
	}
	return nil, false
}

func decode(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			var o object
			for dec.More() {
				key, err := dec.Token()
				if err != nil {
					return nil, err
				}
				v, err := decode(dec)
				if err != nil {
					return nil, err
				}
				o = append(o, member{key.(string), v})
			}
			_, err := dec.Token()
			if o == nil {
				o = object{}
			}
			return o, err
		case '[':
			list := []any{}
			for dec.More() {
				v, err := decode(dec)
				if err != nil {
					return nil, err
				}
				list = append(list, v)
			}
			_, err := dec.Token()
			return list, err
		}
		return nil, fmt.Errorf("unexpected %v", t)
	default:
		return tok, nil // string, json.Number, bool, nil
	}
}

// --- validation in the engine model's order ------------------------------------

type path []any

func (p path) with(part any) path {
	return append(append(path{}, p...), part)
}

func (p path) String() string {
	var b strings.Builder
	for _, part := range p {
		switch v := part.(type) {
		case int:
			fmt.Fprintf(&b, "[%d]", v)
		case string:
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(v)
		}
	}
	if b.Len() == 0 {
		return "(document)"
	}
	return b.String()
}

func problem(p path, message string) *Problem { return &Problem{p.String(), message} }

// field is one member of a model: its wire name, whether it is required, and
// how to read it (nil: the value was absent and has a default).
type field struct {
	name     string
	required bool
	read     func(v any, p path) *Problem
}

// model validates an object against its fields, then refuses unknown members.
func model(v any, p path, fields []field) *Problem {
	o, ok := v.(object)
	if !ok {
		return problem(p, "input should be an object")
	}
	for _, f := range fields {
		value, present := o.get(f.name)
		if !present {
			if f.required {
				return problem(p.with(f.name), "required field is missing")
			}
			continue
		}
		if err := f.read(value, p.with(f.name)); err != nil {
			return err
		}
	}
	known := map[string]bool{}
	for _, f := range fields {
		known[f.name] = true
	}
	for _, m := range o {
		if !known[m.name] {
			return problem(p.with(m.name), "unknown field")
		}
	}
	return nil
}

func str(dst *string) func(any, path) *Problem {
	return func(v any, p path) *Problem {
		s, ok := v.(string)
		if !ok {
			return problem(p, "input should be a valid string")
		}
		*dst = s
		return nil
	}
}

// optStr: a string or null (null: as if absent).
func optStr(dst *string) func(any, path) *Problem {
	return func(v any, p path) *Problem {
		if v == nil {
			return nil
		}
		return str(dst)(v, p)
	}
}

func boolean(dst *bool) func(any, path) *Problem {
	return func(v any, p path) *Problem {
		b, ok := v.(bool)
		if !ok {
			return problem(p, "input should be a valid boolean")
		}
		*dst = b
		return nil
	}
}

// integer reads a JSON integer (no fraction, no exponent) of at least lo;
// one above hi counts as hi (the engine's model has no upper bound).
func integer(v any, p path, lo, hi int64) (int64, *Problem) {
	n, ok := v.(json.Number)
	if !ok || strings.ContainsAny(string(n), ".eE") {
		return 0, problem(p, "input should be a valid integer")
	}
	x, ok := new(big.Int).SetString(string(n), 10)
	if !ok {
		return 0, problem(p, "input should be a valid integer")
	}
	if x.Cmp(big.NewInt(lo)) < 0 {
		return 0, problem(p, fmt.Sprintf("input should be greater than or equal to %d", lo))
	}
	if x.Cmp(big.NewInt(hi)) > 0 {
		return hi, nil
	}
	return x.Int64(), nil
}

func list(v any, p path, item func(any, path) *Problem) *Problem {
	items, ok := v.([]any)
	if !ok {
		return problem(p, "input should be a valid array")
	}
	for i, it := range items {
		if err := item(it, p.with(i)); err != nil {
			return err
		}
	}
	return nil
}

func wrapperConfig(v any, p path, c *Config) *Problem {
	c.Version = 1
	return model(v, p, []field{
		{"version", false, func(v any, p path) *Problem {
			if n, ok := v.(json.Number); !ok || string(n) != "1" {
				return problem(p, "input should be 1")
			}
			return nil
		}},
		{"namespace", true, str(&c.Namespace)},
		{"container", true, str(&c.Container)},
		{"tokenPath", true, str(&c.TokenPath)},
		{"sources", true, func(v any, p path) *Problem {
			return list(v, p, func(v any, p path) *Problem {
				c.Sources = append(c.Sources, Source{})
				return source(v, p, &c.Sources[len(c.Sources)-1])
			})
		}},
		{"refreshSeconds", false, func(v any, p path) *Problem {
			if v == nil {
				return nil
			}
			n, err := integer(v, p, 1, MaxRefreshSeconds)
			c.RefreshSeconds = int(n)
			return err
		}},
		{"requireSecretMem", false, boolean(&c.RequireSecretMem)},
		{"agent", true, func(v any, p path) *Problem {
			return model(v, p, []field{
				{"socket", true, str(&c.Agent.Socket)},
				{"required", true, boolean(&c.Agent.Required)},
			})
		}},
	})
}

func source(v any, p path, s *Source) *Problem {
	return model(v, p, []field{
		{"binding", true, str(&s.Binding)},
		{"address", true, str(&s.Address)},
		{"authMount", true, str(&s.AuthMount)},
		{"role", true, str(&s.Role)},
		{"caFile", false, optStr(&s.CAFile)},
		{"serverName", false, optStr(&s.ServerName)},
		{"clientCertFile", true, str(&s.ClientCertFile)},
		{"clientKeyFile", true, str(&s.ClientKeyFile)},
		{"secrets", true, func(v any, p path) *Problem {
			return list(v, p, func(v any, p path) *Problem {
				s.Secrets = append(s.Secrets, Secret{})
				return secret(v, p, &s.Secrets[len(s.Secrets)-1])
			})
		}},
	})
}

func secret(v any, p path, s *Secret) *Problem {
	return model(v, p, []field{
		{"mount", true, str(&s.Mount)},
		{"path", true, str(&s.Path)},
		{"keys", true, func(v any, p path) *Problem {
			return list(v, p, func(v any, p path) *Problem {
				s.Keys = append(s.Keys, Key{})
				k := &s.Keys[len(s.Keys)-1]
				return model(v, p, []field{
					{"key", true, str(&k.Key)},
					{"env", false, optStr(&k.Env)},
					{"file", false, optStr(&k.File)},
					{"sdk", false, optStr(&k.SDK)},
				})
			})
		}},
	})
}

// Credentials lists the files that let a process log in as this pod: the service-account
// token and every source's client key and certificate, each once, in order. The wrapper names
// them when it registers: the agent protects their volumes for it and its family
// (contracts/README.md).
func (c *Config) Credentials() []string {
	seen := map[string]bool{}
	var out []string
	add := func(p string) {
		if p != "" && !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	add(c.TokenPath)
	for _, s := range c.Sources {
		add(s.ClientKeyFile)
		add(s.ClientCertFile)
	}
	return out
}
