package main

import (
	"bufio"
	"context"
	"debug/buildinfo"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sluicehq/sluice/pkg/testenv"
)

// binaries are the service programs measured, and what they were built from.
type binaries struct {
	dir     string
	temp    bool
	build   buildInfo
	capture string
	writer  string
}

// buildInfo names the source of the measured binaries.
type buildInfo struct {
	Revision string `json:"revision"`
	Modified bool   `json:"modified"`
	Go       string `json:"go"`
}

// prepareBinaries uses the binaries in dir, or builds them from the
// workspace into a temporary directory when dir is empty.
func prepareBinaries(ctx context.Context, dir string) (*binaries, error) {
	b := &binaries{dir: dir}
	if dir == "" {
		tmp, err := os.MkdirTemp("", "sluice-bench-bin-")
		if err != nil {
			return nil, err
		}
		b.dir, b.temp = tmp, true
		build := exec.CommandContext(ctx, "go", "build", "-o", tmp+"/",
			"github.com/sluicehq/sluice/services/capture/cmd/sluice-capture",
			"github.com/sluicehq/sluice/services/redis-writer/cmd/sluice-redis-writer")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			b.cleanup()
			return nil, fmt.Errorf("build the services: %w", err)
		}
	}
	b.capture = filepath.Join(b.dir, "sluice-capture")
	b.writer = filepath.Join(b.dir, "sluice-redis-writer")
	info, err := buildinfo.ReadFile(b.capture)
	if err != nil {
		b.cleanup()
		return nil, fmt.Errorf("read %s: %w", b.capture, err)
	}
	b.build.Go = info.GoVersion
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			b.build.Revision = s.Value
		case "vcs.modified":
			b.build.Modified = s.Value == "true"
		}
	}
	if b.build.Revision == "" {
		b.build.Revision, b.build.Modified = gitRevision(ctx, dir)
	}
	return b, nil
}

// gitRevision describes the checkout holding dir (the current directory
// when empty), for binaries built without version control stamps.
func gitRevision(ctx context.Context, dir string) (rev string, modified bool) {
	if dir == "" {
		dir = "."
	}
	out, err := exec.CommandContext(ctx, "git", "-C", dir, "rev-parse", "HEAD").Output()
	if err != nil {
		return "", false
	}
	status, err := exec.CommandContext(ctx, "git", "-C", dir, "status", "--porcelain", "--untracked-files=no").Output()
	return strings.TrimSpace(string(out)), err != nil || len(status) > 0
}

func (b *binaries) cleanup() {
	if b.temp {
		os.RemoveAll(b.dir)
	}
}

// service is a Sluice program running as a child process, with its pid at
// hand for /proc.
type service struct {
	*testenv.Process
	name string
	http string // the address of its /metrics
}

// startService runs bin with its output in a log file of dir, and extra
// environment variables env. The child dies with the benchmark
// (parent-death signal).
func startService(dir, name string, env []string, bin string, args ...string) (*service, error) {
	p, err := testenv.StartProcessEnv(name, filepath.Join(dir, name+".log"), env, nil, bin, args...)
	if err != nil {
		return nil, err
	}
	return &service{Process: p, name: name}, nil
}

// stop drains the service with SIGTERM, and kills it after grace.
func (s *service) stop(grace time.Duration) {
	if !s.Exited() {
		s.Stop(syscall.SIGTERM, grace)
	}
}

// pipeline is capture and the writers of one sink.
type pipeline struct {
	capture *service
	writers []*service
	stopped bool
}

func startPipeline(e *env, writers int) (*pipeline, error) {
	p := &pipeline{}
	c, err := startMetered(e.dir, "capture", e.profileEnv(writers, "capture"), e.bins.capture, "--config", e.config)
	if err != nil {
		return nil, err
	}
	p.capture = c
	for i := range writers {
		name := "writer-" + strconv.Itoa(i+1)
		w, err := startMetered(e.dir, name, e.profileEnv(writers, name), e.bins.writer, "--config", e.config, "--sink", sinkName)
		if err != nil {
			p.stop()
			return nil, err
		}
		p.writers = append(p.writers, w)
	}
	return p, nil
}

// startMetered starts a service that serves its metrics on a free port.
func startMetered(dir, name string, env []string, bin string, args ...string) (*service, error) {
	port, err := testenv.FreePort()
	if err != nil {
		return nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	s, err := startService(dir, name, env, bin, append(args, "--http", addr)...)
	if err != nil {
		return nil, err
	}
	s.http = addr
	// The endpoint comes up before the service's work begins.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		resp, err := metricsClient.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			return s, nil
		}
		if s.Exited() || time.Now().After(deadline) {
			return s, fmt.Errorf("%s: no metrics endpoint: %v: %s", name, err, s.Tail(2000))
		}
	}
}

// metricsClient asks for pages uncompressed: the measured services serve
// them, and gzipping each was a twentieth of capture's CPU.
var metricsClient = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableCompression: true}}

// metric sums the samples of a metric a service exports whose labels
// include each of labels (e.g. `outcome="applied"`).
func (s *service) metric(name string, labels ...string) (float64, error) {
	resp, err := metricsClient.Get("http://" + s.http + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) || len(line) > len(name) && line[len(name)] != ' ' && line[len(name)] != '{' {
			continue
		}
		if !containsAll(line, labels) {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err == nil {
			sum += v
		}
	}
	return sum, sc.Err()
}

// published is how many events capture has in the stream.
func (p *pipeline) published() (uint64, error) {
	n, err := p.capture.metric("sluice_capture_events_published_total")
	return uint64(n), err
}

// handled is how many events the writers have settled, in all: applied
// (older ones included), filtered out, or dead-lettered.
func (p *pipeline) handled() (uint64, error) {
	var total float64
	for _, w := range p.writers {
		for _, outcome := range []string{"applied", "filtered", "dead_lettered"} {
			n, err := w.metric("sluice_writer_changes_total", `outcome="`+outcome+`"`)
			if err != nil {
				return 0, err
			}
			total += n
		}
	}
	return uint64(total), nil
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// profileSelf writes this process's CPU profile (the embedded NATS
// server's, mostly) to name in the profiles directory, until the returned
// function is called; nothing when -profiles is not set.
func (e *env) profileSelf(name string) (stop func(), err error) {
	if e.profiles == "" {
		return func() {}, nil
	}
	f, err := os.Create(filepath.Join(e.profiles, name))
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		return nil, fmt.Errorf("profile the benchmark: %w", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// profileEnv asks a service for a CPU profile when -profiles is set; it
// is written when the service stops.
func (e *env) profileEnv(writers int, name string) []string {
	if e.profiles == "" {
		return nil
	}
	return []string{"SLUICE_CPUPROFILE=" + filepath.Join(e.profiles, fmt.Sprintf("writers%d-%s.pprof", writers, name))}
}

func (p *pipeline) services() []*service { return append([]*service{p.capture}, p.writers...) }

// check fails when a service has exited.
func (p *pipeline) check() error {
	for _, s := range p.services() {
		if s.Exited() {
			return fmt.Errorf("%s exited: %s", s.name, s.Tail(2000))
		}
	}
	return nil
}

func (p *pipeline) stop() {
	if p.stopped {
		return
	}
	p.stopped = true
	for _, s := range p.services() {
		s.stop(30 * time.Second)
	}
}

// peaks reads each service's peak resident memory so far.
func (p *pipeline) peaks() []peak {
	var out []peak
	for _, s := range p.services() {
		hwm, _ := peakRSS(s.Pid())
		out = append(out, peak{Process: s.name, PeakRSSMiB: mib(hwm)})
	}
	return out
}
