package testenv

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is a redis-server child process that keeps nothing on disk.
type Redis struct {
	Addr string
	Port int
	Dir  string
	// TLS is set when the server speaks only TLS.
	TLS  *TLSFiles
	proc *Process
	args []string
}

// RedisBin finds redis-server.
func RedisBin() (string, error) {
	p, err := exec.LookPath("redis-server")
	if err != nil {
		return "", fmt.Errorf("redis-server not found in PATH; install Redis 6 or newer (Debian: apt-get install redis-server)")
	}
	return p, nil
}

// StartRedis starts redis-server on a free port with extra arguments
// (e.g. "--requirepass", "secret").
func StartRedis(ctx context.Context, args ...string) (*Redis, error) {
	return startRedis(ctx, nil, args...)
}

// StartRedisTLS starts redis-server serving only TLS, with the server
// certificate of files.
func StartRedisTLS(ctx context.Context, files *TLSFiles, args ...string) (*Redis, error) {
	return startRedis(ctx, files, args...)
}

func startRedis(ctx context.Context, files *TLSFiles, args ...string) (*Redis, error) {
	bin, err := RedisBin()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "sluice-redis-")
	if err != nil {
		return nil, err
	}
	r := &Redis{Dir: dir, args: args, TLS: files}
	err = retryPort(func(port int) error {
		r.Port, r.Addr = port, "127.0.0.1:"+strconv.Itoa(port)
		return r.start(ctx, bin)
	})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return r, nil
}

func (r *Redis) start(ctx context.Context, bin string) error {
	args := []string{"--port", strconv.Itoa(r.Port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", r.Dir, "--daemonize", "no"}
	if r.TLS != nil {
		args = append(args, "--port", "0", "--tls-port", strconv.Itoa(r.Port), "--tls-cert-file", r.TLS.Cert,
			"--tls-key-file", r.TLS.Key, "--tls-ca-cert-file", r.TLS.CA, "--tls-auth-clients", "no")
	}
	args = append(args, r.args...)
	proc, err := StartProcess("redis-server", filepath.Join(r.Dir, "redis.log"), nil, bin, args...)
	if err != nil {
		return err
	}
	r.proc = proc
	err = proc.waitReady(ctx, 30*time.Second, func(ctx context.Context) error {
		c := r.Client()
		defer c.Close()
		err := c.Ping(ctx).Err()
		if err != nil && strings.Contains(err.Error(), "NOAUTH") {
			return nil // up, and wants a password
		}
		return err
	})
	if err != nil && strings.Contains(proc.Output(), "Address already in use") {
		return errPortInUse
	}
	return err
}

// Stop stops the server.
func (r *Redis) Stop() {
	if r.proc != nil {
		r.proc.Stop(syscall.SIGTERM, 10*time.Second)
	}
}

// Kill kills the server with SIGKILL, as a crash would.
func (r *Redis) Kill() {
	if r.proc != nil {
		r.proc.Stop(syscall.SIGKILL, time.Second)
	}
}

// Pause stops the server (SIGSTOP): connections stay open, nothing
// answers. Resume continues it.
func (r *Redis) Pause() error { return syscall.Kill(r.proc.Pid(), syscall.SIGSTOP) }

// Resume continues a paused server (SIGCONT).
func (r *Redis) Resume() error { return syscall.Kill(r.proc.Pid(), syscall.SIGCONT) }

// Restart starts the server again on the same port after Stop. Redis keeps
// nothing on disk, so it comes back empty.
func (r *Redis) Restart(ctx context.Context) error {
	bin, err := RedisBin()
	if err != nil {
		return err
	}
	return r.start(ctx, bin)
}

// Close stops the server and removes its directory.
func (r *Redis) Close() {
	r.Stop()
	os.RemoveAll(r.Dir)
}

// Client returns a client of the server.
func (r *Redis) Client() *redis.Client {
	o := &redis.Options{Addr: r.Addr, MaxRetries: -1}
	if r.TLS != nil {
		o.TLSConfig = &tls.Config{RootCAs: r.TLS.Pool(), ServerName: "127.0.0.1"}
	}
	return redis.NewClient(o)
}

// NewRedis starts a server for a test and stops it when the test ends.
func NewRedis(t TB, args ...string) *Redis {
	t.Helper()
	r, err := StartRedis(context.Background(), args...)
	if err != nil {
		t.Fatalf("start redis: %v", err)
	}
	t.Cleanup(r.Close)
	return r
}
