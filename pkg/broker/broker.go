// Package broker runs a NATS server with JetStream inside the process, for
// `sluice dev`, the demo and the tests.
package broker

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/nats-io/jwt/v2"
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
	// Auth is whom the server lets in; the zero value lets in anyone.
	Auth Auth
}

// Auth is how clients of an embedded server authenticate. Set one of
// Users, Token, NKeys and Operator; TLS goes with any of them.
type Auth struct {
	// Users are names with their passwords.
	Users map[string]string
	// Token is the token every client gives.
	Token string
	// NKeys are the public keys of users who sign the server's nonce with
	// their seed.
	NKeys []string
	// Operator trusts users by JWTs its accounts signed (credentials
	// files); Accounts maps each account's public key to its JWT, and
	// SystemAccount is one of them.
	Operator      *jwt.OperatorClaims
	SystemAccount string
	Accounts      map[string]string
	// TLS makes the server speak TLS only; with VerifyClients it asks
	// for a client certificate signed by one of TLS.ClientCAs.
	TLS           *tls.Config
	VerifyClients bool
}

// apply sets the server options of a.
func (a Auth) apply(o *server.Options) error {
	for name, password := range a.Users {
		o.Users = append(o.Users, &server.User{Username: name, Password: password})
	}
	o.Authorization = a.Token
	for _, k := range a.NKeys {
		o.Nkeys = append(o.Nkeys, &server.NkeyUser{Nkey: k})
	}
	if a.Operator != nil {
		resolver := &server.MemAccResolver{}
		for pub, token := range a.Accounts {
			if err := resolver.Store(pub, token); err != nil {
				return err
			}
		}
		o.TrustedOperators = []*jwt.OperatorClaims{a.Operator}
		o.AccountResolver = resolver
		o.SystemAccount = a.SystemAccount
	}
	if a.TLS != nil {
		o.TLS, o.TLSConfig, o.TLSVerify = true, a.TLS, a.VerifyClients
		if a.VerifyClients {
			a.TLS.ClientAuth = tls.RequireAndVerifyClientCert
		}
	}
	return nil
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
	opts := &server.Options{
		ServerName: "sluice-embedded",
		Host:       "127.0.0.1",
		Port:       port,
		JetStream:  true,
		StoreDir:   s.dir,
		NoSigs:     true,
		NoLog:      true,
	}
	if err := o.Auth.apply(opts); err != nil {
		s.removeDir()
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	ns, err := server.NewServer(opts)
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

// InProcessConn is a client connection to the server without a socket.
func (s *Server) InProcessConn() (net.Conn, error) { return s.ns.InProcessConn() }

// Refusals counts the connections of the client named name that the
// server closed for their credentials, among the closed connections it
// remembers.
func (s *Server) Refusals(name string) (int, error) {
	c, err := s.ns.Connz(&server.ConnzOptions{State: server.ConnClosed, Limit: 1 << 16})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, ci := range c.Conns {
		if ci.Name == name && ci.Reason == server.AuthenticationViolation.String() {
			n++
		}
	}
	return n, nil
}

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
