package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Postgres is a throwaway Postgres cluster with wal_level=logical.
type Postgres struct {
	// URL connects as the superuser "postgres" to the database "postgres".
	URL  string
	Port int
	Dir  string
	proc *Process
	cred *syscall.Credential
	bin  string
	args []string
}

// PostgresOptions tune the cluster.
type PostgresOptions struct {
	// Durable keeps fsync on; off by default, as the data is thrown away.
	Durable bool
	// Settings are extra postgres -c settings.
	Settings map[string]string
}

// PostgresBinDir finds the directory holding initdb and postgres: PATH,
// then pg_config, then the newest /usr/lib/postgresql/*/bin.
func PostgresBinDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		dir := filepath.Dir(p)
		if _, err := os.Stat(filepath.Join(dir, "postgres")); err == nil {
			return dir, nil
		}
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		dir := strings.TrimSpace(string(out))
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err == nil {
			return dir, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { return majorOf(b) - majorOf(a) })
	for _, dir := range dirs {
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err == nil {
			return dir, nil
		}
	}
	return "", fmt.Errorf("PostgreSQL server programs (initdb, postgres) not found in PATH or /usr/lib/postgresql/*/bin; install PostgreSQL 14 or newer (Debian: apt-get install postgresql)")
}

func majorOf(dir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return n
}

// StartPostgres initialises and starts a cluster in a new temporary
// directory. initdb refuses to run as root, so as root the cluster belongs
// to the "postgres" OS user.
func StartPostgres(ctx context.Context, o PostgresOptions) (*Postgres, error) {
	bin, err := PostgresBinDir()
	if err != nil {
		return nil, err
	}
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root needs the OS user postgres to own the cluster: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	dir, err := os.MkdirTemp("", "sluice-pg-")
	if err != nil {
		return nil, err
	}
	p := &Postgres{Dir: dir, cred: cred}
	fail := func(err error) (*Postgres, error) {
		p.Stop()
		return nil, err
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return fail(err)
		}
	}
	data := filepath.Join(dir, "data")
	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return fail(fmt.Errorf("initdb: %v: %s", err, out))
	}
	settings := map[string]string{
		"listen_addresses":        "127.0.0.1",
		"unix_socket_directories": "",
		"wal_level":               "logical",
		"max_wal_senders":         "20",
		"max_replication_slots":   "20",
		"max_connections":         "200",
		"shared_buffers":          "128MB",
		"log_min_messages":        "warning",
		"wal_sender_timeout":      "60s",
	}
	if !o.Durable {
		settings["fsync"] = "off"
		settings["synchronous_commit"] = "off"
		settings["full_page_writes"] = "off"
	}
	for k, v := range o.Settings {
		settings[k] = v
	}
	p.bin = filepath.Join(bin, "postgres")
	err = retryPort(func(port int) error {
		p.args = []string{"-D", data, "-p", strconv.Itoa(port)}
		for k, v := range settings {
			p.args = append(p.args, "-c", k+"="+v)
		}
		p.Port = port
		p.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
		return p.start(ctx)
	})
	if err != nil {
		return fail(err)
	}
	return p, nil
}

func (p *Postgres) start(ctx context.Context) error {
	proc, err := StartProcess("postgres", filepath.Join(p.Dir, "postgres.log"), p.cred, p.bin, p.args...)
	if err != nil {
		return err
	}
	p.proc = proc
	err = proc.waitReady(ctx, 60*time.Second, func(ctx context.Context) error {
		conn, err := pgx.Connect(ctx, p.URL)
		if err != nil {
			return err
		}
		return conn.Close(ctx)
	})
	if err != nil && strings.Contains(proc.Output(), "Address already in use") {
		return errPortInUse
	}
	return err
}

// Restart stops the server (fast shutdown: connections are cut) and
// starts it again on the same port and data.
func (p *Postgres) Restart(ctx context.Context) error {
	p.proc.Stop(syscall.SIGINT, 15*time.Second)
	return p.start(ctx)
}

// BaseBackup copies the running cluster with pg_basebackup (the WAL up to
// the copy's end included, no replication slot) into a new directory
// under Dir, and returns it: a backup to Restore later.
func (p *Postgres) BaseBackup(ctx context.Context) (string, error) {
	dir, err := os.MkdirTemp(p.Dir, "backup-")
	if err != nil {
		return "", err
	}
	if p.cred != nil {
		if err := os.Chown(dir, int(p.cred.Uid), int(p.cred.Gid)); err != nil {
			return "", err
		}
	}
	bb := exec.CommandContext(ctx, filepath.Join(filepath.Dir(p.bin), "pg_basebackup"), "-D", dir, "-h", "127.0.0.1",
		"-p", strconv.Itoa(p.Port), "-U", "postgres", "-X", "stream", "-c", "fast", "--no-sync")
	bb.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	if out, err := bb.CombinedOutput(); err != nil {
		return "", fmt.Errorf("pg_basebackup: %v: %s", err, out)
	}
	return dir, nil
}

// Restore stops the server and starts, in its place (same port and
// settings), the cluster of a BaseBackup: the database as it was then.
func (p *Postgres) Restore(ctx context.Context, backup string) error {
	p.proc.Stop(syscall.SIGINT, 15*time.Second)
	for i, a := range p.args {
		if a == "-D" {
			p.args[i+1] = backup
		}
	}
	return p.start(ctx)
}

// Pause stops (SIGSTOP) the server and every backend: connections stay
// open and new ones are accepted by the kernel, but nothing answers, as
// when a network drops packets silently. Resume continues them.
func (p *Postgres) Pause() error { return p.signalAll(syscall.SIGSTOP) }

// Resume continues a paused server (SIGCONT).
func (p *Postgres) Resume() error { return p.signalAll(syscall.SIGCONT) }

// signalAll signals the postmaster and its children. Each backend is the
// leader of a process group of its own, so the postmaster's group alone
// would leave them running; a stopped postmaster forks no new ones.
func (p *Postgres) signalAll(sig syscall.Signal) error {
	pm := p.proc.Pid()
	if err := syscall.Kill(pm, sig); err != nil {
		return err
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return err
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...: comm may hold spaces, so read after ')'.
		fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(pm) {
			_ = syscall.Kill(pid, sig)
		}
	}
	return nil
}

// Stop shuts the cluster down (fast mode) and removes its directory.
func (p *Postgres) Stop() {
	if p.proc != nil {
		_ = p.Resume() // a paused server would not shut down
		p.proc.Stop(syscall.SIGINT, 15*time.Second)
	}
	os.RemoveAll(p.Dir)
}

// PasswordRole creates a superuser role that logs in over TCP only with
// password (scram-sha-256), while postgres keeps logging in without one,
// and returns the URL of the database postgres for it, the password in
// it percent-encoded.
func (p *Postgres) PasswordRole(ctx context.Context, role, password string) (string, error) {
	data := ""
	for i, a := range p.args {
		if a == "-D" {
			data = p.args[i+1]
		}
	}
	// Rewritten in place: the file keeps its owner.
	hba := "host all postgres 127.0.0.1/32 trust\nhost replication postgres 127.0.0.1/32 trust\n" +
		"host all all 127.0.0.1/32 scram-sha-256\nhost replication all 127.0.0.1/32 scram-sha-256\n"
	if err := os.WriteFile(filepath.Join(data, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		return "", err
	}
	conn, err := pgx.Connect(ctx, p.URL)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	var create string
	if err := conn.QueryRow(ctx, `SELECT format('CREATE ROLE %I SUPERUSER LOGIN REPLICATION PASSWORD %L', $1::text, $2::text)`, role, password).Scan(&create); err != nil {
		return "", err
	}
	if _, err := conn.Exec(ctx, create); err != nil {
		return "", err
	}
	if _, err := conn.Exec(ctx, `SELECT pg_reload_conf()`); err != nil {
		return "", err
	}
	u := url.URL{Scheme: "postgres", User: url.UserPassword(role, password), Host: fmt.Sprintf("127.0.0.1:%d", p.Port), Path: "/postgres", RawQuery: "sslmode=disable"}
	// The server reloads its configuration asynchronously: wait until it
	// refuses a wrong password.
	wrong := u
	wrong.User = url.UserPassword(role, password+"-wrong")
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := pgx.Connect(ctx, wrong.String())
		if err != nil {
			break
		}
		c.Close(ctx)
		if time.Now().After(deadline) {
			return "", errors.New("pg_hba.conf: a wrong password is still let in after 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return u.String(), nil
}

// NewPostgres starts a cluster for a test and stops it when the test ends.
func NewPostgres(t TB, o PostgresOptions) *Postgres {
	t.Helper()
	p, err := StartPostgres(context.Background(), o)
	if err != nil {
		t.Fatalf("start postgres: %v", err)
	}
	t.Cleanup(p.Stop)
	return p
}

// Exec runs SQL statements on the cluster, failing the test on error.
func (p *Postgres) Exec(t TB, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.URL)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("exec %q: %v", sql, err)
	}
}
