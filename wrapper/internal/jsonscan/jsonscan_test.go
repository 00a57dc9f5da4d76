package jsonscan

import (
	"encoding/json"
	"testing"
	"unicode/utf8"
)

type sink []byte

func (s *sink) Append(p []byte) error { *s = append(*s, p...); return nil }

var docs = []string{
	`{"auth": {"client_token": "s.abc", "policies": ["a", "b"]}, "data": null}`,
	`{"data": {"data": {"password": "p\u00e9\"\\/\b\f\n\r\t", "n": 5, "emoji": "\ud83d\ude00"}}}`,
	`{"data": {"data": {"lone": "\ud800x", "k\u0065y": "v", "key": "w"}}}`,
	` [1, -0.5e+3, true, false, null, {}, [], ""] `,
	`{"a": 1,}`, `{"a" 1}`, `[1 2]`, `"\x"`, "\"a\x01\"", `01`, `1.`, `-`, `{"a": tru}`, `{`, ``, `"`,
	`{"a": [{"b": {"c": "d"}}]} x`,
}

// FuzzAgainstEncodingJSON: validity and string decoding agree with
// encoding/json (the seeds run in every `go test`).
func FuzzAgainstEncodingJSON(f *testing.F) {
	for _, d := range docs {
		f.Add([]byte(d))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		if Valid(doc) != json.Valid(doc) {
			t.Fatalf("Valid(%q) = %v, encoding/json says %v", doc, Valid(doc), json.Valid(doc))
		}
		// Bytes that are not UTF-8 are kept as they are (encoding/json
		// replaces them; OpenBao's encoder never sends them).
		if !Valid(doc) || !IsString(doc) || !utf8.Valid(doc) {
			return
		}
		var want string
		if err := json.Unmarshal(doc, &want); err != nil {
			t.Fatal(err)
		}
		var got sink
		if err := Unquote(doc, &got); err != nil || string(got) != want {
			t.Fatalf("Unquote(%q) = %q, %v; want %q", doc, got, err, want)
		}
	})
}

func TestLookup(t *testing.T) {
	doc := []byte(docs[0])
	raw, ok := Lookup(doc, "auth", "client_token")
	if !ok || string(raw) != `"s.abc"` {
		t.Fatalf("Lookup = %q, %v", raw, ok)
	}
	if _, ok := Lookup(doc, "auth", "nope"); ok {
		t.Fatal("found a member that is not there")
	}
	if raw, ok := Lookup(doc, "data"); !ok || !IsNull(raw) {
		t.Fatalf("data = %q", raw)
	}
	if _, ok := Lookup(doc, "data", "data"); ok {
		t.Fatal("looked into null")
	}
	// an escaped member name matches, and of duplicates the last counts
	raw, ok = Lookup([]byte(docs[2]), "data", "data", "key")
	if !ok || string(raw) != `"w"` {
		t.Fatalf("key = %q, %v", raw, ok)
	}
	var got sink
	raw, _ = Lookup([]byte(docs[1]), "data", "data", "password")
	if err := Unquote(raw, &got); err != nil || string(got) != "p\u00e9\"\\/\b\f\n\r\t" {
		t.Fatalf("Unquote = %q, %v", got, err)
	}
}

func TestElements(t *testing.T) {
	var seen []string
	err := Elements([]byte(`["x", 1, {"a": [2]}]`), func(v []byte) bool {
		seen = append(seen, string(v))
		return true
	})
	if err != nil || len(seen) != 3 || seen[2] != `{"a": [2]}` {
		t.Fatalf("Elements = %q, %v", seen, err)
	}
}
