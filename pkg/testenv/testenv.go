// Package testenv starts real servers on free ports for tests, benchmarks
// and the demo: a throwaway Postgres cluster with logical replication, a
// redis-server, and an embedded NATS server with JetStream.
//
// Servers are child processes in their own process group that die with the
// process that started them (Linux parent-death signal), so a crashed or
// killed test leaves nothing running.
package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// TB is the part of testing.TB the New* helpers use.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Process is a child process whose output goes to a log file. It runs in
// its own process group, so that a terminal's Ctrl-C reaches only its
// parent, and it is killed when the parent dies.
type Process struct {
	Name string
	Log  string // the output file
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// StartProcess starts bin with args, as the user of cred when it is not nil,
// appending its output to logPath.
func StartProcess(name, logPath string, cred *syscall.Credential, bin string, args ...string) (*Process, error) {
	return StartProcessEnv(name, logPath, nil, cred, bin, args...)
}

// StartProcessEnv is StartProcess with extra environment variables.
func StartProcessEnv(name, logPath string, env []string, cred *syscall.Credential, bin string, args ...string) (*Process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Process{Name: name, Log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Signal sends sig to the process.
func (p *Process) Signal(sig syscall.Signal) { _ = p.cmd.Process.Signal(sig) }

// Wait waits up to timeout for the process to end and returns its exit
// status; ok is false when it still runs.
func (p *Process) Wait(timeout time.Duration) (code int, ok bool) {
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode(), true
	case <-time.After(timeout):
		return -1, false
	}
}

// Stop sends sig, waits up to grace, then kills the process group, and
// returns the exit status.
func (p *Process) Stop(sig syscall.Signal, grace time.Duration) int {
	p.Signal(sig)
	if code, ok := p.Wait(grace); ok {
		return code
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
	return p.cmd.ProcessState.ExitCode()
}

// Output returns everything the process wrote.
func (p *Process) Output() string {
	b, _ := os.ReadFile(p.Log)
	return string(b)
}

// Tail returns the last n bytes of the output, for error messages.
func (p *Process) Tail(n int) string {
	out := strings.TrimSpace(p.Output())
	if len(out) > n {
		return "…" + out[len(out)-n:]
	}
	return out
}

// waitReady polls ready until it succeeds, the process exits or timeout.
func (p *Process) waitReady(ctx context.Context, timeout time.Duration, ready func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		if last = ready(ctx); last == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited (%v) before it was ready: %s", p.Name, p.err, p.Tail(2000))
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %s: %v: %s", p.Name, timeout, last, p.Tail(2000))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func retryPort(start func(port int) error) error {
	var err error
	for range 3 {
		var port int
		if port, err = FreePort(); err != nil {
			return err
		}
		if err = start(port); err == nil || !errors.Is(err, errPortInUse) {
			return err
		}
	}
	return err
}

var errPortInUse = errors.New("port in use")

// Pid is the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }
