// Package metrics serves what an operator's tools read of a service:
// Prometheus metrics on /metrics, liveness on /healthz, readiness on
// /readyz, and Go's profiles on /debug/pprof/. Services define their metrics with promauto on the default
// registry and report readiness through Ready.
package metrics

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

var (
	mu     sync.Mutex
	checks = map[string]func() error{}
)

// Ready registers a readiness check under name; /readyz fails while any
// check fails. Registering a name again replaces its check.
func Ready(name string, check func() error) {
	mu.Lock()
	defer mu.Unlock()
	checks[name] = check
}

func readiness() []string {
	mu.Lock()
	defer mu.Unlock()
	var failing []string
	for name, check := range checks {
		if err := check(); err != nil {
			failing = append(failing, fmt.Sprintf("%s: %v", name, err))
		}
	}
	sort.Strings(failing)
	return failing
}

// Handler serves the three endpoints.
func Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.Handler())
	// Profiles, for finding where a live service spends its time or memory.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if failing := readiness(); len(failing) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			for _, f := range failing {
				fmt.Fprintln(w, f)
			}
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

// Start listens on addr and serves in the background until ctx is done.
// It returns the address it listens on (addr may ask for port 0).
func Start(ctx context.Context, addr string) (string, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("http: listen on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	return l.Addr().String(), nil
}
