package config

import (
	"fmt"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// interpolate replaces ${VAR} and ${VAR:-default} in every scalar of the tree.
// It works on parsed scalars rather than on the file's text so that a value
// from the environment (a password with ": " or "#") can never change the
// structure of the document. "$${" stands for a literal "${".
func interpolate(n *yaml.Node, lookup func(string) (string, bool)) error {
	if n.Kind == yaml.ScalarNode && strings.Contains(n.Value, "${") {
		v, err := Expand(n.Value, lookup)
		if err != nil {
			return fmt.Errorf("line %d: %w", n.Line, err)
		}
		if v != n.Value {
			n.Value = v
			if n.Style == 0 || n.Style == yaml.TaggedStyle {
				n.Tag = scalarTag(v)
			}
		}
	}
	for _, c := range n.Content {
		if err := interpolate(c, lookup); err != nil {
			return err
		}
	}
	return nil
}

// scalarTag gives an expanded plain scalar a type, so that `port: ${PORT}`
// decodes as a number, but never null: an empty or "null" password stays a
// string.
func scalarTag(v string) string {
	if _, err := strconv.ParseInt(v, 0, 64); err == nil {
		return "!!int"
	}
	if v == "true" || v == "false" {
		return "!!bool"
	}
	return "!!str"
}

// Expand replaces ${VAR} and ${VAR:-default} in s. A variable that is unset
// and has no default is an error naming it. ${VAR:-default} uses the default
// when VAR is unset or empty, as in POSIX shells.
func Expand(s string, lookup func(string) (string, bool)) (string, error) {
	var b strings.Builder
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			b.WriteString(s)
			return b.String(), nil
		}
		if i > 0 && s[i-1] == '$' { // "$${" is a literal "${"
			b.WriteString(s[:i-1])
			b.WriteString("${")
			s = s[i+2:]
			continue
		}
		b.WriteString(s[:i])
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			return "", fmt.Errorf("unclosed ${ in %q", s[i:])
		}
		ref := s[i+2 : i+end]
		s = s[i+end+1:]
		name, def, hasDef := strings.Cut(ref, ":-")
		if !validVar(name) {
			return "", fmt.Errorf("invalid variable name %q in ${%s}", name, ref)
		}
		v, ok := lookup(name)
		switch {
		case ok && (v != "" || !hasDef):
			b.WriteString(v)
		case hasDef:
			b.WriteString(def)
		default:
			return "", fmt.Errorf("environment variable %s is not set (use ${%s:-default} for a default)", name, name)
		}
	}
}

func validVar(name string) bool {
	if name == "" {
		return false
	}
	for i, r := range name {
		if r == '_' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || i > 0 && r >= '0' && r <= '9' {
			continue
		}
		return false
	}
	return true
}
