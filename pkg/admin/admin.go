// Package admin is a service's HTTP endpoints for operators' tools:
// Prometheus metrics on /metrics, liveness on /healthz, readiness on
// /readyz and, when asked for, Go's profiles on /debug/pprof/. Services
// define their metrics with promauto on the default registry and register
// their checks with Live and Ready.
package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

var (
	mu         sync.Mutex
	liveness   = map[string]func() error{}
	readiness  = map[string]func() error{}
	errDrained = errors.New("stopping: draining what it holds")
)

// Live registers a liveness check under name: /healthz fails while it
// fails, which tells an orchestrator to restart the process. A check says
// whether a loop still makes progress, not whether its dependencies are up.
// Registering a name again replaces its check.
func Live(name string, check func() error) { register(liveness, name, check) }

// Ready registers a readiness check under name: /readyz fails while it
// fails, and until a service registered one. Registering a name again
// replaces its check.
func Ready(name string, check func() error) { register(readiness, name, check) }

func register(checks map[string]func() error, name string, check func() error) {
	mu.Lock()
	defer mu.Unlock()
	checks[name] = check
}

// Note is what a check returns to pass with something to say: a standby
// is ready, and says it stands by.
type Note string

func (n Note) Error() string { return string(n) }

// failing runs checks: the failures, and the notes of those that pass.
func failing(checks map[string]func() error) (failed, notes []string) {
	mu.Lock()
	defer mu.Unlock()
	for name, check := range checks {
		var note Note
		switch err := check(); {
		case errors.As(err, &note):
			notes = append(notes, fmt.Sprintf("%s: %s", name, note))
		case err != nil:
			failed = append(failed, fmt.Sprintf("%s: %v", name, err))
		}
	}
	sort.Strings(failed)
	sort.Strings(notes)
	return failed, notes
}

// Server serves the endpoints.
type Server struct {
	srv      *http.Server
	addr     string
	draining atomic.Bool
}

// Start listens on addr (which may ask for port 0) and serves in the
// background until Close. pprof adds /debug/pprof/.
func Start(addr string, pprof bool) (*Server, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("http: listen on %s: %w", addr, err)
	}
	s := &Server{addr: l.Addr().String()}
	s.srv = &http.Server{Handler: s.handler(pprof), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = s.srv.Serve(l) }()
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string { return s.addr }

// Drain makes /readyz fail from now on, so that no new work is routed to a
// service that is stopping; the other endpoints keep answering until Close.
func (s *Server) Drain() { s.draining.Store(true) }

// Close stops serving, giving requests in flight two seconds.
func (s *Server) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = s.srv.Shutdown(ctx)
}

func (s *Server) handler(withPProf bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.Handler())
	if withPProf {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	}
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		f, notes := failing(liveness)
		answer(w, f, "ok", notes)
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		f, notes := failing(readiness)
		mu.Lock()
		if len(readiness) == 0 {
			// Not yet connected to what its checks watch.
			f = append(f, "starting")
		}
		mu.Unlock()
		if s.draining.Load() {
			f = append([]string{errDrained.Error()}, f...)
		}
		answer(w, f, "ready", notes)
	})
	return mux
}

func answer(w http.ResponseWriter, failing []string, ok string, notes []string) {
	if len(failing) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		for _, f := range failing {
			fmt.Fprintln(w, f)
		}
		return
	}
	fmt.Fprintln(w, ok)
	for _, n := range notes {
		fmt.Fprintln(w, n)
	}
}
