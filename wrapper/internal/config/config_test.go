package config

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type vector struct {
	Name         string          `json:"name"`
	Config       json.RawMessage `json:"config"`
	Text         *string         `json:"text"`
	Valid        bool            `json:"valid"`
	ErrorPath    string          `json:"error_path"`
	ErrorMessage *string         `json:"error_message"`
}

// TestContractVectors: every config vector of contracts/wrapper-contract.json,
// with the first problem's path and message exactly as the engine reports it.
func TestContractVectors(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "..", "contracts", "wrapper-contract.json"))
	if err != nil {
		t.Fatal(err)
	}
	var contract struct {
		Config struct {
			Vectors []vector `json:"vectors"`
		} `json:"config"`
	}
	if err := json.Unmarshal(raw, &contract); err != nil {
		t.Fatal(err)
	}
	if len(contract.Config.Vectors) < 20 {
		t.Fatalf("only %d config vectors", len(contract.Config.Vectors))
	}
	for _, v := range contract.Config.Vectors {
		t.Run(v.Name, func(t *testing.T) {
			input := []byte(v.Config)
			if v.Text != nil {
				input = []byte(*v.Text)
			}
			c, err := Parse(input)
			if v.Valid {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if c.Version != 1 || c.Agent.Socket == "" {
					t.Fatalf("Parse = %+v", c)
				}
				return
			}
			p, ok := err.(*Problem)
			if !ok {
				t.Fatalf("Parse = %+v, %v; want a *Problem at %s", c, err, v.ErrorPath)
			}
			if p.Path != v.ErrorPath {
				t.Fatalf("problem %q, want the path %s", p, v.ErrorPath)
			}
			if v.ErrorMessage != nil && p.Message != *v.ErrorMessage {
				t.Fatalf("problem %q, want the message %q", p, *v.ErrorMessage)
			}
		})
	}
}

func TestParseReadsEveryMember(t *testing.T) {
	c, err := Parse([]byte(`{"version": 1, "namespace": "ns", "container": "app", "tokenPath": "/t",
	  "sources": [{"binding": "ns/b", "address": "https://bao:8200", "authMount": "kubernetes",
	    "role": "r", "caFile": "/ca", "serverName": "bao.internal", "clientCertFile": "/c",
	    "clientKeyFile": "/k", "secrets": [{"mount": "secret", "path": "p", "keys": [
	      {"key": "a", "env": "A", "file": "/etc/a", "sdk": "a"}, {"key": "b", "env": null}]}]}],
	  "refreshSeconds": 30, "requireSecretMem": true,
	  "agent": {"socket": "/run/cloudtaser/agent.sock", "required": true}}`))
	if err != nil {
		t.Fatal(err)
	}
	s := c.Sources[0]
	got := strings.Join([]string{c.Namespace, c.Container, c.TokenPath, s.Binding, s.Address,
		s.AuthMount, s.Role, s.CAFile, s.ServerName, s.ClientCertFile, s.ClientKeyFile,
		s.Secrets[0].Mount, s.Secrets[0].Path, s.Secrets[0].Keys[0].Key, s.Secrets[0].Keys[0].Env,
		s.Secrets[0].Keys[0].File, s.Secrets[0].Keys[0].SDK, s.Secrets[0].Keys[1].Key,
		s.Secrets[0].Keys[1].Env, c.Agent.Socket}, "|")
	want := "ns|app|/t|ns/b|https://bao:8200|kubernetes|r|/ca|bao.internal|/c|/k|secret|p|a|A|/etc/a|a|b||/run/cloudtaser/agent.sock"
	if got != want || c.RefreshSeconds != 30 || !c.RequireSecretMem || !c.Agent.Required {
		t.Fatalf("Parse = %s %+v", got, c)
	}
}

func TestCredentialsAreTheTokenAndEachSourcesKeyPairOnce(t *testing.T) {
	c := &Config{TokenPath: "/t/token", Sources: []Source{
		{ClientKeyFile: "/tls/tls.key", ClientCertFile: "/tls/tls.crt"},
		{ClientKeyFile: "/tls/tls.key", ClientCertFile: "/tls/tls.crt"},
	}}
	got := strings.Join(c.Credentials(), " ")
	if got != "/t/token /tls/tls.key /tls/tls.crt" {
		t.Fatalf("Credentials() = %q", got)
	}
}
