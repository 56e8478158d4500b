package harness

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"testing"

	"github.com/sluicehq/sluice/pkg/testenv"
)

// Served is a process that serves its admin endpoints (/metrics, /healthz,
// /readyz) on Addr.
type Served struct {
	*Proc
	Addr string
}

// StartServing is Start with --http on a free port.
func StartServing(t testing.TB, name string, args ...string) *Served {
	t.Helper()
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	return &Served{Start(t, name, append(args, "--http", addr)...), addr}
}

// Get answers "<status> <body>" for path, or the request's error.
func (s *Served) Get(path string) string {
	resp, err := http.Get("http://" + s.Addr + path)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return fmt.Sprintf("%d %s", resp.StatusCode, b)
}
