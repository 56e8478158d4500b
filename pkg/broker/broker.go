// Package broker runs a NATS server with JetStream inside the process, for
// `sluice dev`, the demo and the tests.
package broker

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Server is an embedded NATS server.
type Server struct {
	ns      *server.Server
	dir     string
	ownsDir bool
}

// Options of an embedded server.
type Options struct {
	// Dir keeps the JetStream data; empty means a new temporary directory,
	// removed by Shutdown.
	Dir string
	// Port to listen on, on 127.0.0.1; 0 picks a free one.
	Port int
}

// Start starts a server and waits until it accepts connections.
func Start(o Options) (*Server, error) {
	s := &Server{dir: o.Dir}
	if s.dir == "" {
		dir, err := os.MkdirTemp("", "sluice-nats-")
		if err != nil {
			return nil, err
		}
		s.dir, s.ownsDir = dir, true
	}
	port := o.Port
	if port == 0 {
		port = server.RANDOM_PORT
	}
	ns, err := server.NewServer(&server.Options{
		ServerName: "sluice-embedded",
		Host:       "127.0.0.1",
		Port:       port,
		JetStream:  true,
		StoreDir:   s.dir,
		NoSigs:     true,
		NoLog:      true,
	})
	if err != nil {
		s.removeDir()
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(15 * time.Second) {
		ns.Shutdown()
		s.removeDir()
		return nil, errors.New("embedded nats: not ready after 15s")
	}
	s.ns = ns
	return s, nil
}

// URL is the client URL of the server.
func (s *Server) URL() string { return s.ns.ClientURL() }

// Dir is where JetStream keeps its data.
func (s *Server) Dir() string { return s.dir }

// Shutdown stops the server and removes a temporary data directory.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
	s.removeDir()
}

func (s *Server) removeDir() {
	if s.ownsDir {
		os.RemoveAll(s.dir)
	}
}
