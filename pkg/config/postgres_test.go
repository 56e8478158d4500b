package config_test

import (
	"strings"
	"testing"

	"github.com/sluicehq/sluice/pkg/config"
)

func postgresDoc(url string) string {
	return "postgres: {url: '" + strings.ReplaceAll(url, "'", "''") + "', tables: [users]}\nsinks: [{name: a, destination: {type: redis_string, host: h, port: 1}}]\n"
}

// postgres.url must parse as the services parse it. The error names the
// field and the parser's reason, and never a part of the password, which
// the parser's own messages quote when a '/', '@' or '%' in it breaks the
// URL.
func TestPostgresURLErrors(t *testing.T) {
	const a, b, c = "partone1", "parttwo2", "partthree3"
	password := a + "/" + b + "@" + c + "%zz"
	for _, tc := range []struct{ name, url, want string }{
		{"password unescaped", "postgres://app:" + password + "@db:5432/app", "postgres.url: cannot be parsed: failed to parse as URL; percent-encode reserved characters of a password"},
		{"escape broken", "postgres://app:" + a + "%zz" + b + "@db/app", "postgres.url: cannot be parsed: failed to parse as URL"},
		{"keywords", "host=db user=app password='" + password + "' dbname", "postgres.url: cannot be parsed: failed to parse as keyword/value"},
		{"port", "host=db port=54x32 user=app password='" + password + "'", "postgres.url: cannot be parsed: invalid port"},
		{"url port", "postgres://app:" + a + "@db:99999/app", "postgres.url: cannot be parsed: invalid port"},
		{"tls file", "postgres://app:" + a + "@db/app?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem", "postgres.url: cannot be parsed: failed to configure TLS (open /nonexistent/ca.pem: no such file or directory)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := config.Parse([]byte(postgresDoc(tc.url)), config.Everything, noEnv)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			for _, s := range []string{a, b, c} {
				if strings.Contains(err.Error(), s) {
					t.Errorf("error %q shows the password", err)
				}
			}
		})
	}
	// A writer reads no postgres.url.
	if _, err := config.Parse([]byte(postgresDoc("postgres://app:"+password+"@db/app")), config.Writer("a"), noEnv); err != nil {
		t.Errorf("writer: %v", err)
	}
}

func TestPostgresURLValid(t *testing.T) {
	for _, url := range []string{
		"postgres://app:pa%2Fss%40word%25@db:5432/app?sslmode=require",
		"postgresql://app@db1:5432,db2:5433/app?target_session_attrs=read-write",
		"host=db port=5432 user=app password='pa/ss@wo%rd x' dbname=app",
	} {
		if _, err := config.Parse([]byte(postgresDoc(url)), config.Everything, noEnv); err != nil {
			t.Errorf("%s: %v", url, err)
		}
	}
}
