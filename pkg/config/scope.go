package config

import (
	"fmt"
	"slices"

	"go.yaml.in/yaml/v3"
)

// A Scope is the part of the file one service reads. Only that part's
// ${VAR} references are resolved and only that part is validated, so that
// a deployment gives each service the secrets it uses and no other: capture
// never reads a sink's destination, and a writer reads its own sink's
// destination and not postgres.url.
type Scope struct {
	service string // "" is every part
	sink    string // a writer's sink
}

var (
	// Everything is the whole file: `sluice dev` and the operator's
	// commands, which may touch any part.
	Everything = Scope{}
	// Capture is what sluice-capture reads: postgres, nats, and the sinks
	// without their destinations.
	Capture = Scope{service: "capture"}
)

// Writer is what `sluice-redis-writer --sink NAME` reads: nats, and of the
// sinks only NAME's destination.
func Writer(sink string) Scope { return Scope{service: "writer", sink: sink} }

// String names the scope in messages.
func (s Scope) String() string {
	switch s.service {
	case "":
		return "every service"
	case "writer":
		return "the writer of sink " + s.sink
	}
	return s.service
}

// postgresURL says whether the scope uses postgres.url.
func (s Scope) postgresURL() bool { return s.service != "writer" }

// destination says whether the scope uses the destination of a sink.
func (s Scope) destination(sink string) bool {
	switch s.service {
	case "capture":
		return false
	case "writer":
		return sink == s.sink
	}
	return true
}

// prune removes from the document what the scope does not read, before
// anything in it is resolved, so that an unset variable there is no error.
func (s Scope) prune(doc *yaml.Node) error {
	if doc.Kind != yaml.MappingNode {
		return nil
	}
	if !s.postgresURL() {
		if pg := value(doc, "postgres"); pg != nil {
			remove(pg, "url")
		}
	}
	sinks := value(doc, "sinks")
	if sinks == nil || sinks.Kind != yaml.SequenceNode {
		return nil
	}
	var names []string
	for _, sink := range sinks.Content {
		name := ""
		if n := value(sink, "name"); n != nil {
			name = n.Value
		}
		names = append(names, name)
		if !s.destination(name) {
			remove(sink, "destination")
		}
	}
	if s.service == "writer" && !slices.Contains(names, s.sink) {
		return fmt.Errorf("no sink named %q (sinks: %v)", s.sink, names)
	}
	return nil
}

// value returns the value of key in mapping m, or nil.
func value(m *yaml.Node, key string) *yaml.Node {
	if m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

// remove deletes key from mapping m.
func remove(m *yaml.Node, key string) {
	if m.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			m.Content = slices.Delete(m.Content, i, i+2)
			return
		}
	}
}
