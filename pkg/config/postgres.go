package config

import (
	"errors"
	"io/fs"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// validateURL checks that postgres.url parses as the services parse it,
// so that a mistake is a config error and no later parse can fail. The
// message never quotes the URL, nor the parser's details: both may hold
// a password (the parser's own redaction misses parts of one holding '/',
// '@' or '%').
func (p Postgres) validateURL(errs *fieldErrors) {
	if p.URL == "" {
		return
	}
	_, err := pgx.ParseConfig(p.URL)
	if err == nil {
		return
	}
	msg := "cannot be parsed"
	var pe *pgconn.ParseConfigError
	if errors.As(err, &pe) {
		// The parser's reason, without the string and the detail in
		// parentheses; a file it could not read (sslrootcert, …) is named.
		bare := *pe
		bare.ConnString = ""
		reason, _, _ := strings.Cut(strings.TrimPrefix(bare.Error(), "cannot parse ``: "), " (")
		msg += ": " + reason
		var file *fs.PathError
		if errors.As(err, &file) {
			msg += " (" + file.Error() + ")"
		}
		if strings.HasPrefix(reason, "failed to parse as") {
			msg += "; percent-encode reserved characters of a password in a URL (/ @ : % ? #), or quote it in a keyword/value string (password='…')"
		}
	}
	errs.add("postgres.url", msg)
}
