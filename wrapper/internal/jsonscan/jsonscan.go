// Package jsonscan reads OpenBao's JSON answers where they lie: in a secret
// buffer. encoding/json would copy every string it decodes into the Go heap,
// where nothing can wipe it; here a lookup returns a sub-slice of the
// document (the raw JSON text of a value), and Unquote decodes a string into a
// buffer the caller owns (a secmem buffer). Nothing allocates.
package jsonscan

import (
	"errors"
	"unicode/utf8"
)

// ErrSyntax is any malformed document.
var ErrSyntax = errors.New("malformed JSON")

const maxDepth = 128

// Valid reports whether doc is exactly one well-formed JSON value (with
// surrounding whitespace).
func Valid(doc []byte) bool {
	end, err := skipValue(doc, skipSpace(doc, 0), 0)
	return err == nil && skipSpace(doc, end) == len(doc)
}

// Lookup returns the raw value at the member path (names of nested objects;
// of duplicate members the last counts, as in Python's json), or false. doc
// must be Valid.
func Lookup(doc []byte, path ...string) ([]byte, bool) {
	raw := trim(doc)
	for _, name := range path {
		var found []byte
		ok := false
		if err := Members(raw, func(key, value []byte) bool {
			if KeyIs(key, name) {
				found, ok = value, true
			}
			return true
		}); err != nil || !ok {
			return nil, false
		}
		raw = found
	}
	return raw, true
}

// Members calls f(key, value) for each member of the object raw, in order (key
// as raw JSON string text, quotes included); f returns false to stop. An
// error means raw is not an object.
func Members(raw []byte, f func(key, value []byte) bool) error {
	return items(raw, '{', f)
}

// Elements calls f for each element of the array raw, in order.
func Elements(raw []byte, f func(value []byte) bool) error {
	return items(raw, '[', func(_, value []byte) bool { return f(value) })
}

// items walks the members ('{': key and value) or elements ('[': value only)
// of the container raw.
func items(raw []byte, open byte, f func(key, value []byte) bool) error {
	raw = trim(raw)
	closer := byte(']')
	if open == '{' {
		closer = '}'
	}
	if len(raw) == 0 || raw[0] != open {
		return ErrSyntax
	}
	i := skipSpace(raw, 1)
	if i < len(raw) && raw[i] == closer {
		return nil
	}
	for i < len(raw) {
		var key []byte
		if open == '{' {
			keyEnd, err := skipString(raw, i)
			if err != nil {
				return err
			}
			key = raw[i:keyEnd]
			i = skipSpace(raw, keyEnd)
			if i >= len(raw) || raw[i] != ':' {
				return ErrSyntax
			}
			i = skipSpace(raw, i+1)
		}
		end, err := skipValue(raw, i, 1)
		if err != nil {
			return err
		}
		if !f(key, raw[i:end]) {
			return nil
		}
		i = skipSpace(raw, end)
		if i < len(raw) && raw[i] == ',' {
			i = skipSpace(raw, i+1)
			continue
		}
		if i < len(raw) && raw[i] == closer {
			return nil
		}
		return ErrSyntax
	}
	return ErrSyntax
}

// IsString reports whether raw is a JSON string.
func IsString(raw []byte) bool {
	raw = trim(raw)
	return len(raw) >= 2 && raw[0] == '"'
}

// IsNull reports whether raw is null.
func IsNull(raw []byte) bool {
	raw = trim(raw)
	return len(raw) == 4 && string(raw) == "null"
}

// Appender is where Unquote writes (a secmem.Buffer).
type Appender interface {
	Append(p []byte) error
}

// Unquote decodes the JSON string raw into dst. raw must be a valid string.
func Unquote(raw []byte, dst Appender) error {
	raw = trim(raw)
	if !IsString(raw) {
		return ErrSyntax
	}
	body := raw[1 : len(raw)-1]
	var scratch [utf8.UTFMax]byte
	for i := 0; i < len(body); {
		j := i
		for j < len(body) && body[j] != '\\' {
			j++
		}
		if j > i {
			if err := dst.Append(body[i:j]); err != nil {
				return err
			}
		}
		if j == len(body) {
			break
		}
		r, n, err := escape(body, j)
		if err != nil {
			return err
		}
		w := utf8.EncodeRune(scratch[:], r)
		err = dst.Append(scratch[:w])
		clear(scratch[:])
		if err != nil {
			return err
		}
		i = j + n
	}
	return nil
}

// KeyIs reports whether the raw JSON string key decodes to name.
func KeyIs(key []byte, name string) bool {
	m := matcher{want: name}
	return Unquote(key, &m) == nil && !m.differs && m.at == len(name)
}

// matcher is an Appender that compares what is appended with want.
type matcher struct {
	want    string
	at      int
	differs bool
}

func (m *matcher) Append(p []byte) error {
	if m.differs || m.at+len(p) > len(m.want) || m.want[m.at:m.at+len(p)] != string(p) {
		m.differs = true
		return nil
	}
	m.at += len(p)
	return nil
}

// escape decodes the escape sequence at body[i] ('\\'): the rune and its length.
func escape(body []byte, i int) (rune, int, error) {
	if i+1 >= len(body) {
		return 0, 0, ErrSyntax
	}
	switch body[i+1] {
	case '"', '\\', '/':
		return rune(body[i+1]), 2, nil
	case 'b':
		return '\b', 2, nil
	case 'f':
		return '\f', 2, nil
	case 'n':
		return '\n', 2, nil
	case 'r':
		return '\r', 2, nil
	case 't':
		return '\t', 2, nil
	case 'u':
		r, ok := hex4(body, i+2)
		if !ok {
			return 0, 0, ErrSyntax
		}
		if r >= 0xD800 && r < 0xDC00 { // a high surrogate: its low half must follow
			if lo, ok := hex4(body, i+8); ok && i+7 < len(body) && body[i+6] == '\\' &&
				body[i+7] == 'u' && lo >= 0xDC00 && lo < 0xE000 {
				return 0x10000 + (r-0xD800)<<10 + (lo - 0xDC00), 12, nil
			}
			return utf8.RuneError, 6, nil
		}
		if r >= 0xDC00 && r < 0xE000 {
			return utf8.RuneError, 6, nil
		}
		return r, 6, nil
	}
	return 0, 0, ErrSyntax
}

func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

func trim(b []byte) []byte {
	i, j := 0, len(b)
	for i < j && isSpace(b[i]) {
		i++
	}
	for j > i && isSpace(b[j-1]) {
		j--
	}
	return b[i:j]
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// skipValue returns the end of the value starting at b[i].
func skipValue(b []byte, i, depth int) (int, error) {
	if i >= len(b) {
		return 0, ErrSyntax
	}
	switch c := b[i]; {
	case c == '"':
		return skipString(b, i)
	case c == '{' || c == '[':
		if depth >= maxDepth {
			return 0, ErrSyntax
		}
		return skipContainer(b, i, depth+1)
	case c == 't':
		return literal(b, i, "true")
	case c == 'f':
		return literal(b, i, "false")
	case c == 'n':
		return literal(b, i, "null")
	case c == '-' || (c >= '0' && c <= '9'):
		return skipNumber(b, i)
	}
	return 0, ErrSyntax
}

func literal(b []byte, i int, word string) (int, error) {
	if i+len(word) > len(b) || string(b[i:i+len(word)]) != word {
		return 0, ErrSyntax
	}
	return i + len(word), nil
}

func skipString(b []byte, i int) (int, error) {
	if i >= len(b) || b[i] != '"' {
		return 0, ErrSyntax
	}
	for i++; i < len(b); {
		switch c := b[i]; {
		case c == '"':
			return i + 1, nil
		case c == '\\':
			_, n, err := escape(b, i)
			if err != nil {
				return 0, err
			}
			i += n
		case c < 0x20:
			return 0, ErrSyntax
		default:
			i++
		}
	}
	return 0, ErrSyntax
}

func skipNumber(b []byte, i int) (int, error) {
	start := i
	if b[i] == '-' {
		i++
	}
	digits := func() int {
		n := 0
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i, n = i+1, n+1
		}
		return n
	}
	if i < len(b) && b[i] == '0' {
		i++
	} else if digits() == 0 {
		return 0, ErrSyntax
	}
	if i < len(b) && b[i] == '.' {
		i++
		if digits() == 0 {
			return 0, ErrSyntax
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if digits() == 0 {
			return 0, ErrSyntax
		}
	}
	if i == start {
		return 0, ErrSyntax
	}
	return i, nil
}

func skipContainer(b []byte, i, depth int) (int, error) {
	open := b[i]
	closer := byte('}')
	if open == '[' {
		closer = ']'
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == closer {
		return i + 1, nil
	}
	for i < len(b) {
		if open == '{' {
			end, err := skipString(b, i)
			if err != nil {
				return 0, err
			}
			i = skipSpace(b, end)
			if i >= len(b) || b[i] != ':' {
				return 0, ErrSyntax
			}
			i = skipSpace(b, i+1)
		}
		end, err := skipValue(b, i, depth)
		if err != nil {
			return 0, err
		}
		i = skipSpace(b, end)
		if i < len(b) && b[i] == ',' {
			i = skipSpace(b, i+1)
			continue
		}
		if i < len(b) && b[i] == closer {
			return i + 1, nil
		}
		return 0, ErrSyntax
	}
	return 0, ErrSyntax
}
