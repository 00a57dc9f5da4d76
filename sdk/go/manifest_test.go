package cloudtaser

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func TestParseManifestValid(t *testing.T) {
	cases := []struct {
		name     string
		manifest string
		want     map[string]int
	}{
		{"empty", "", map[string]int{}},
		{"only newline", "\n", map[string]int{}},
		{"example", "file 5 /etc/app/tls.key\nsdk 6 db-password\nsdk 7 api-token",
			map[string]int{"db-password": 6, "api-token": 7}},
		{"trailing newline", "sdk 6 db-password\nsdk 7 api-token\n",
			map[string]int{"db-password": 6, "api-token": 7}},
		{"name is rest of line", "sdk 8 my secret  name ",
			map[string]int{"my secret  name ": 8}},
		{"file only", "file 5 /etc/app/tls.key", map[string]int{}},
		{"env only", "env 5 DB_PASSWORD", map[string]int{}},
		{"file and sdk share an fd", "file 5 /x\nsdk 5 x", map[string]int{"x": 5}},
		{"large fd", "sdk 2147483647 big", map[string]int{"big": 2147483647}},
		{"leading zeros", "sdk 007 bond", map[string]int{"bond": 7}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := parseManifest(c.manifest)
			if err != nil {
				t.Fatalf("parseManifest: %v", err)
			}
			if !reflect.DeepEqual(s.fds, c.want) {
				t.Fatalf("fds = %v, want %v", s.fds, c.want)
			}
			var names []string
			for n := range c.want {
				names = append(names, n)
			}
			got := s.secrets()
			if len(got) != len(names) {
				t.Fatalf("secrets() = %q, want %d names", got, len(names))
			}
			for i := 1; i < len(got); i++ {
				if got[i-1] >= got[i] {
					t.Fatalf("secrets() not sorted: %q", got)
				}
			}
		})
	}
}

func TestParseManifestMalformed(t *testing.T) {
	// marker stands for content that must never be echoed: whatever sits
	// in a malformed line could be a secret pasted by mistake.
	const marker = "hunter2-MARKER"
	cases := []struct {
		name     string
		manifest string
		line     int
	}{
		{"no spaces", marker, 1},
		{"missing name", "sdk 5", 1},
		{"empty name", "sdk 6 ok\nsdk 5 ", 2},
		{"unknown kind", "secret 5 " + marker, 1},
		{"kind is case sensitive", "SDK 5 " + marker, 1},
		{"leading space", " sdk 5 " + marker, 1},
		{"negative fd", "sdk -1 " + marker, 1},
		{"signed fd", "sdk +5 " + marker, 1},
		{"hex fd", "sdk 0x5 " + marker, 1},
		{"empty fd", "sdk  " + marker, 1},
		{"non-numeric fd", "sdk " + marker + " x", 1},
		{"fd overflow int32", "sdk 2147483648 x", 1},
		{"fd overflow int64", "sdk 99999999999999999999 x", 1},
		{"blank line in the middle", "sdk 5 a\n\nsdk 6 b", 2},
		{"two trailing newlines", "sdk 5 a\n\n", 2},
		{"duplicate sdk name", "sdk 5 a\nfile 6 /a\nsdk 7 a", 3},
		{"relative file path", "sdk 5 a\nfile 6 " + marker, 2},
		{"later line", "sdk 5 a\nsdk 6 b\nfile 7 /c\nnonsense " + marker, 4},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := parseManifest(c.manifest)
			if err == nil {
				t.Fatalf("parseManifest accepted %q: %v", c.manifest, s.fds)
			}
			if !errors.Is(err, ErrMalformedManifest) || !strings.HasPrefix(err.Error(), "cloudtaser: ") {
				t.Fatalf("error %v is not ErrMalformedManifest", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, fmt.Sprintf("line %d:", c.line)) {
				t.Fatalf("error %q does not name line %d", msg, c.line)
			}
			if strings.Contains(msg, marker) {
				t.Fatalf("error %q echoes line content", msg)
			}
		})
	}
}

func TestNewStoreNotConfigured(t *testing.T) {
	s, err := newStore(func(string) (string, bool) { return "", false })
	if !errors.Is(err, ErrNotConfigured) || s != nil {
		t.Fatalf("newStore without %s = %v, %v; want ErrNotConfigured", EnvVar, s, err)
	}
	s, err = newStore(func(k string) (string, bool) {
		if k != EnvVar {
			t.Errorf("looked up %q", k)
		}
		return "sdk 9 a\n", true
	})
	if err != nil || s.fds["a"] != 9 {
		t.Fatalf("newStore = %v, %v", s, err)
	}
	_, err = newStore(func(string) (string, bool) { return "garbage", true })
	if !errors.Is(err, ErrMalformedManifest) {
		t.Fatalf("newStore(garbage) = %v; want ErrMalformedManifest", err)
	}
}

func TestUnknownSecret(t *testing.T) {
	s, err := parseManifest("sdk 6 db-password\nsdk 7 api-token\nfile 5 /etc/app/tls.key\n")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"nope", "/etc/app/tls.key"} {
		_, err = s.get(name)
		if !errors.Is(err, ErrUnknownSecret) {
			t.Fatalf("get(%q) = %v; want ErrUnknownSecret", name, err)
		}
		msg := err.Error()
		for _, want := range []string{`"` + name + `"`, `"api-token"`, `"db-password"`} {
			if !strings.Contains(msg, want) {
				t.Errorf("error %q lacks %s", msg, want)
			}
		}
		if strings.Contains(msg, "fd") || strings.Contains(msg, "6") {
			t.Errorf("error %q mentions fds of other secrets", msg)
		}
	}

	empty, _ := parseManifest("")
	_, err = empty.get("x")
	if !errors.Is(err, ErrUnknownSecret) || !strings.Contains(err.Error(), "known: none") {
		t.Fatalf("get on empty manifest = %v", err)
	}
}

func TestWipe(t *testing.T) {
	b := []byte("not really a secret")
	Wipe(b)
	for i, c := range b {
		if c != 0 {
			t.Fatalf("byte %d = %d after Wipe", i, c)
		}
	}
	Wipe(nil) // must not panic
}
