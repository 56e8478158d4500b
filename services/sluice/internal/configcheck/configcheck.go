// Package configcheck is `sluice config check`: validate a config file as
// one service would read it, without connecting to anything.
package configcheck

import (
	"fmt"
	"io"
	"strings"

	"github.com/sluicehq/sluice/pkg/config"
)

// Scope turns the command's --service and --sink into the part of the
// file to check.
func Scope(service, sink string) (config.Scope, error) {
	switch service {
	case "", "all":
		if sink != "" {
			return config.Scope{}, fmt.Errorf("--sink goes with --service writer")
		}
		return config.Everything, nil
	case "capture":
		if sink != "" {
			return config.Scope{}, fmt.Errorf("--sink goes with --service writer")
		}
		return config.Capture, nil
	case "writer":
		if sink == "" {
			return config.Scope{}, fmt.Errorf("--service writer needs --sink")
		}
		return config.Writer(sink), nil
	}
	return config.Scope{}, fmt.Errorf("--service %q is not capture, writer or all", service)
}

// Run loads the file at path as scope reads it (resolving its ${VAR}
// references from the environment) and says what it configures.
func Run(out io.Writer, path string, scope config.Scope) error {
	cfg, err := config.Load(path, scope)
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	fmt.Fprintf(out, "%s: valid for %s\n", path, scope)
	fmt.Fprintf(out, "  tables  %s\n", strings.Join(cfg.Postgres.Tables, ", "))
	fmt.Fprintf(out, "  stream  %s, %d partitions, %d replicas\n", cfg.NATS.Stream, cfg.NATS.Partitions, cfg.NATS.Replicas)
	for _, s := range cfg.Sinks {
		fmt.Fprintf(out, "  sink    %s: %s\n", s.Name, strings.Join(s.Tables, ", "))
	}
	return nil
}
