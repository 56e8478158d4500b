package config_test

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nkeys"

	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/testenv"
)

// natsDoc is a config whose nats section holds lines (YAML, indented as
// its fields).
func natsDoc(lines ...string) string {
	return "postgres: {url: 'postgres://db/app', tables: [users]}\nnats:\n  " + strings.Join(lines, "\n  ") +
		"\nsinks: [{name: a, destination: {type: redis_string, host: h, port: 1}}]\n"
}

func noEnv(string) (string, bool) { return "", false }

// natsFiles are the files of the NATS settings, good and bad.
type natsFiles struct {
	seed, publicKey, creds, jwtOnly, garbage, dir, missing string
	ca, cert, key, otherKey                                string
	// secrets are the long lines of the files with a seed, credentials
	// or a private key: no message may show them.
	secrets []string
}

func newNATSFiles(t *testing.T) natsFiles {
	t.Helper()
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	user, _ := nkeys.CreateUser()
	seed, _ := user.Seed()
	pub, _ := user.PublicKey()
	account, _ := nkeys.CreateAccount()
	accountSeed, _ := account.Seed()
	// A JWT need not verify here: the file's shape is checked, not the
	// server's trust.
	jwt := "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJqdGkiOiJ0ZXN0In0.c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJl"
	creds := fmt.Sprintf("-----BEGIN NATS USER JWT-----\n%s\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n%s\n------END USER NKEY SEED------\n", jwt, accountSeed)
	f := natsFiles{
		seed:      write("user.nk", string(seed)),
		publicKey: write("user.pub", pub),
		creds:     write("user.creds", creds),
		jwtOnly:   write("jwt-only.creds", "-----BEGIN NATS USER JWT-----\n"+jwt+"\n------END NATS USER JWT------\n"),
		garbage:   write("garbage", "not a key\n"),
		dir:       filepath.Join(dir, "a-directory"),
		missing:   filepath.Join(dir, "missing"),
		secrets:   []string{string(seed), string(accountSeed), jwt},
	}
	if err := os.Mkdir(f.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	tlsDir, otherDir := filepath.Join(dir, "tls"), filepath.Join(dir, "other")
	for _, d := range []string{tlsDir, otherDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	files, err := testenv.NewTLSFiles(tlsDir)
	if err != nil {
		t.Fatal(err)
	}
	other, err := testenv.NewTLSFiles(otherDir)
	if err != nil {
		t.Fatal(err)
	}
	f.ca, f.cert, f.key, f.otherKey = files.CA, files.Cert, files.Key, other.Key
	for _, k := range []string{f.key, f.otherKey} {
		b, err := os.ReadFile(k)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if len(line) >= 40 && !strings.HasPrefix(line, "-") {
				f.secrets = append(f.secrets, line)
			}
		}
	}
	return f
}

// The NATS connection settings: one way to authenticate at a time, a
// certificate with its key, files that exist, are readable and hold what
// they should, URLs that parse. Each error names its field and quotes no
// secret: no password, token, seed, JWT or key, neither in the fields
// nor in a URL, however it is spelt.
func TestNATSConnectionErrors(t *testing.T) {
	f := newNATSFiles(t)
	const password, token = "pa/ss@wo%rd:secret1", "to/ke@n%secret2"
	escaped := url.UserPassword("app", password).String()
	secrets := append([]string{password, token, url.QueryEscape(password), url.PathEscape(password), "secret1", "secret2"}, f.secrets...)
	cases := []struct {
		name  string
		lines []string
		want  string
	}{
		{"username and token", []string{"url: nats://n:4222", "username: app", "password: '" + password + "'", "token: '" + token + "'"},
			"nats.token: is a second way to authenticate, beside nats.username; give one"},
		{"token and nkey", []string{"url: nats://n:4222", "token: '" + token + "'", "nkey_file: " + f.seed},
			"nats.nkey_file: is a second way to authenticate, beside nats.token"},
		{"nkey and creds", []string{"url: nats://n:4222", "nkey_file: " + f.seed, "creds_file: " + f.creds},
			"nats.creds_file: is a second way to authenticate, beside nats.nkey_file"},
		{"url user info and password", []string{"url: 'nats://" + escaped + "@n:4222'", "username: app", "password: '" + password + "'"},
			"nats.username: is a second way to authenticate, beside the user info in nats.url"},
		{"url token and creds", []string{"url: 'nats://n1:4222,nats://" + url.PathEscape(token) + "@n2:4222'", "creds_file: " + f.creds},
			"nats.creds_file: is a second way to authenticate, beside the user info in nats.url"},
		{"username alone", []string{"url: nats://n:4222", "username: app"}, "nats.password: is required with nats.username"},
		{"password alone", []string{"url: nats://n:4222", "password: '" + password + "'"}, "nats.username: is required with nats.password"},
		{"credentials without url", []string{"token: '" + token + "'"}, "nats.url: is required with the NATS credentials"},
		{"tls files without tls", []string{"url: nats://n:4222", "tls_ca_file: " + f.ca}, "nats.tls: must be true when tls_ca_file"},
		{"cert without key", []string{"url: tls://n:4222", "tls: true", "tls_cert_file: " + f.cert}, "nats.tls_key_file: is required with nats.tls_cert_file"},
		{"key without cert", []string{"url: tls://n:4222", "tls: true", "tls_key_file: " + f.key}, "nats.tls_cert_file: is required with nats.tls_key_file"},
		{"cert with another key", []string{"url: tls://n:4222", "tls: true", "tls_cert_file: " + f.cert, "tls_key_file: " + f.otherKey},
			"nats.tls_cert_file: and nats.tls_key_file are not a certificate and its key"},
		{"cert missing", []string{"url: tls://n:4222", "tls: true", "tls_cert_file: " + f.missing, "tls_key_file: " + f.key},
			"nats.tls_cert_file: stat " + f.missing + ": no such file or directory"},
		{"key missing", []string{"url: tls://n:4222", "tls: true", "tls_cert_file: " + f.cert, "tls_key_file: " + f.missing},
			"nats.tls_key_file: stat " + f.missing + ": no such file or directory"},
		{"key unreadable", []string{"url: tls://n:4222", "tls: true", "tls_cert_file: " + f.cert, "tls_key_file: " + f.dir},
			"nats.tls_cert_file: and nats.tls_key_file are not a certificate and its key: read " + f.dir + ": is a directory"},
		{"ca missing", []string{"url: tls://n:4222", "tls: true", "tls_ca_file: " + f.missing}, "nats.tls_ca_file: open " + f.missing + ": no such file or directory"},
		{"ca unreadable", []string{"url: tls://n:4222", "tls: true", "tls_ca_file: " + f.dir}, "nats.tls_ca_file: read " + f.dir + ": is a directory"},
		{"ca not pem", []string{"url: tls://n:4222", "tls: true", "tls_ca_file: " + f.garbage}, "nats.tls_ca_file: " + f.garbage + " holds no PEM certificate"},
		{"ca is a key", []string{"url: tls://n:4222", "tls: true", "tls_ca_file: " + f.key}, "nats.tls_ca_file: " + f.key + " holds no PEM certificate"},
		{"nkey missing", []string{"url: nats://n:4222", "nkey_file: " + f.missing}, "nats.nkey_file: open " + f.missing + ": no such file or directory"},
		{"nkey unreadable", []string{"url: nats://n:4222", "nkey_file: " + f.dir}, "nats.nkey_file: read " + f.dir + ": is a directory"},
		{"nkey garbage", []string{"url: nats://n:4222", "nkey_file: " + f.garbage}, "nats.nkey_file: " + f.garbage + " holds no NKey seed"},
		{"nkey public", []string{"url: nats://n:4222", "nkey_file: " + f.publicKey}, "nats.nkey_file: " + f.publicKey + " holds a public key, not a seed"},
		{"nkey is creds of a key", []string{"url: nats://n:4222", "nkey_file: " + f.key}, "nats.nkey_file: " + f.key + " holds no NKey seed"},
		{"creds missing", []string{"url: nats://n:4222", "creds_file: " + f.missing}, "nats.creds_file: open " + f.missing + ": no such file or directory"},
		{"creds unreadable", []string{"url: nats://n:4222", "creds_file: " + f.dir}, "nats.creds_file: read " + f.dir + ": is a directory"},
		{"creds without seed", []string{"url: nats://n:4222", "creds_file: " + f.jwtOnly}, "nats.creds_file: " + f.jwtOnly + " holds no NKey seed"},
		{"creds garbage", []string{"url: nats://n:4222", "creds_file: " + f.garbage}, "nats.creds_file: " + f.garbage + " holds no user JWT"},
		{"creds is a seed", []string{"url: nats://n:4222", "creds_file: " + f.seed}, "nats.creds_file: " + f.seed + " holds no user JWT"},
		{"password unescaped in url", []string{"url: 'nats://app:" + password + "@n:4222'"},
			"nats.url: cannot be parsed as a URL; percent-encode reserved characters of a password in it"},
		{"token unescaped in url", []string{"url: 'nats://" + token + "@n:4222'"}, "nats.url: cannot be parsed as a URL"},
		{"second url unescaped", []string{"url: 'nats://n1:4222, nats://app:" + password + "@n2:4222'"}, "nats.url (server 2 of 2): cannot be parsed as a URL"},
		{"escape broken", []string{"url: 'nats://app:secret1%zz@n:4222'"}, "nats.url: cannot be parsed as a URL"},
		{"scheme", []string{"url: 'http://" + escaped + "@n:4222'"}, `nats.url: scheme "http" is not nats, tls, ws or wss`},
		{"no host", []string{"url: 'nats://" + escaped + "@'"}, "nats.url: has no host"},
		{"no server", []string{"url: ' , '"}, "nats.url: lists no server"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := config.Parse([]byte(natsDoc(c.lines...)), config.Everything, noEnv)
			if err == nil {
				t.Fatalf("no error, want %q", c.want)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q\nwant it to contain %q", err, c.want)
			}
			for _, s := range secrets {
				if strings.Contains(err.Error(), s) {
					t.Errorf("error %q shows the secret %q", err, s)
				}
			}
		})
	}
}

// Each way to authenticate alone is valid, with TLS or without.
func TestNATSConnectionValid(t *testing.T) {
	f := newNATSFiles(t)
	for name, lines := range map[string][]string{
		"none":                 {"url: nats://n:4222"},
		"several servers":      {"url: 'nats://n1:4222, n2:4222,tls://n3:4222'"},
		"user info in url":     {"url: 'nats://app:pa%2Fss%40word@n:4222'"},
		"token in url":         {"url: 'nats://t0ken@n:4222'"},
		"username":             {"url: nats://n:4222", "username: app", "password: 'pa/ss@word'"},
		"token":                {"url: nats://n:4222", "token: 't/k@n'"},
		"nkey_file":            {"url: nats://n:4222", "nkey_file: " + f.seed},
		"creds_file":           {"url: nats://n:4222", "creds_file: " + f.creds},
		"tls":                  {"url: tls://n:4222", "tls: true"},
		"client certificate":   {"url: tls://n:4222", "tls: true", "tls_ca_file: " + f.ca, "tls_cert_file: " + f.cert, "tls_key_file: " + f.key},
		"token and client tls": {"url: tls://n:4222", "token: t", "tls: true", "tls_ca_file: " + f.ca, "tls_cert_file: " + f.cert, "tls_key_file: " + f.key},
	} {
		t.Run(name, func(t *testing.T) {
			cfg, err := config.Parse([]byte(natsDoc(lines...)), config.Everything, noEnv)
			if err != nil {
				t.Fatal(err)
			}
			if name == "several servers" && len(cfg.NATS.Servers()) != 3 {
				t.Errorf("servers %q", cfg.NATS.Servers())
			}
		})
	}
}
