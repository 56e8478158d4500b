package admin

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestEndpoints(t *testing.T) {
	s, err := Start("127.0.0.1:0", false)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	base := "http://" + s.Addr()
	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	var stuck error = errors.New("no progress for 1m0s")
	Live("loop", func() error { return stuck })
	if code, body := get(t, base+"/healthz"); code != 503 || !strings.Contains(body, "loop: no progress") {
		t.Errorf("/healthz while stuck = %d %q", code, body)
	}
	stuck = nil
	if code, body := get(t, base+"/readyz"); code != 503 || !strings.Contains(body, "starting") {
		t.Errorf("/readyz before any check = %d %q", code, body)
	}
	var failing error = errors.New("slot not streaming")
	Ready("capture", func() error { return failing })
	if code, body := get(t, base+"/readyz"); code != 503 || !strings.Contains(body, "capture: slot not streaming") {
		t.Errorf("/readyz while failing = %d %q", code, body)
	}
	failing = nil
	if code, _ := get(t, base+"/readyz"); code != 200 {
		t.Errorf("/readyz when ready = %d", code)
	}
	failing = Note("standing by")
	if code, body := get(t, base+"/readyz"); code != 200 || !strings.Contains(body, "capture: standing by") {
		t.Errorf("/readyz with a note = %d %q", code, body)
	}
	failing = nil
	if code, body := get(t, base+"/metrics"); code != 200 || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics = %d", code)
	}
	if code, _ := get(t, base+"/debug/pprof/"); code != 404 {
		t.Errorf("/debug/pprof/ without pprof = %d", code)
	}
	// Draining: not ready, still alive and still serving.
	s.Drain()
	if code, body := get(t, base+"/readyz"); code != 503 || !strings.Contains(body, "draining") {
		t.Errorf("/readyz while draining = %d %q", code, body)
	}
	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Errorf("/healthz while draining = %d", code)
	}
	if _, err := Start(s.Addr(), false); err == nil {
		t.Error("a second listener on a taken address started")
	}
}

func TestPProfWhenAsked(t *testing.T) {
	s, err := Start("127.0.0.1:0", true)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if code, _ := get(t, "http://"+s.Addr()+"/debug/pprof/"); code != 200 {
		t.Errorf("/debug/pprof/ = %d", code)
	}
}
