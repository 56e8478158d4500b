package config

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/nats-io/nkeys"
)

// Servers returns the URLs of nats.url, one per server.
func (n NATS) Servers() []string {
	var out []string
	for _, s := range strings.Split(n.URL, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// Auth names the way the client authenticates, for messages: "none",
// "url", "username", "token", "nkey_file" or "creds_file".
func (n NATS) Auth() string {
	if m := n.authFields(); len(m) > 0 {
		return m[0]
	}
	if n.urlUserInfo() {
		return "url"
	}
	return "none"
}

// authFields are the ways to authenticate the fields set.
func (n NATS) authFields() []string {
	var set []string
	if n.Username != "" || n.Password != "" {
		set = append(set, "username")
	}
	for _, f := range []struct{ name, value string }{{"token", n.Token}, {"nkey_file", n.NKeyFile}, {"creds_file", n.CredsFile}} {
		if f.value != "" {
			set = append(set, f.name)
		}
	}
	return set
}

// urlUserInfo says whether a server's URL holds a user, password or token.
func (n NATS) urlUserInfo() bool {
	for _, s := range n.Servers() {
		if u, err := parseServer(s); err == nil && u.User != nil {
			return true
		}
	}
	return false
}

// Secrets are the passwords and tokens of the connection settings, in the
// fields and in the URLs: what no message may show.
func (n NATS) Secrets() []string {
	var out []string
	add := func(s string) {
		if s != "" {
			out = append(out, s)
			// A URL may hold it percent-encoded.
			if e := url.PathEscape(s); e != s {
				out = append(out, e)
			}
			if e := url.QueryEscape(s); e != s {
				out = append(out, e)
			}
		}
	}
	add(n.Password)
	add(n.Token)
	for _, s := range n.Servers() {
		u, err := parseServer(s)
		if err != nil || u.User == nil {
			continue
		}
		if p, ok := u.User.Password(); ok {
			add(p)
		} else {
			add(u.User.Username()) // a token
		}
	}
	return out
}

// parseServer parses one server's URL as nats.go does: without a scheme
// it is nats://.
func parseServer(s string) (*url.URL, error) {
	if !strings.Contains(s, "://") {
		s = "nats://" + s
	}
	return url.Parse(s)
}

// validateConnection checks the servers, the one way to authenticate and
// the TLS files. No message quotes a URL: it may hold a password.
func (n NATS) validateConnection(errs *fieldErrors) {
	servers := n.Servers()
	for i, s := range servers {
		at := "nats.url"
		if len(servers) > 1 {
			at = fmt.Sprintf("nats.url (server %d of %d)", i+1, len(servers))
		}
		u, err := parseServer(s)
		switch {
		case err != nil:
			// The parser's message quotes the URL's parts, a password's too.
			errs.add(at, "cannot be parsed as a URL; percent-encode reserved characters of a password in it, or give the password in nats.password")
		case u.Hostname() == "":
			errs.add(at, "has no host")
		case u.Scheme != "nats" && u.Scheme != "tls" && u.Scheme != "ws" && u.Scheme != "wss":
			errs.add(at, fmt.Sprintf("scheme %q is not nats, tls, ws or wss", u.Scheme))
		}
	}
	if n.URL != "" && len(servers) == 0 {
		errs.add("nats.url", "lists no server")
	}
	methods := n.authFields()
	if len(methods) > 1 {
		errs.add("nats."+methods[1], fmt.Sprintf("is a second way to authenticate, beside nats.%s; give one", methods[0]))
	}
	if len(methods) > 0 && n.urlUserInfo() {
		errs.add("nats."+methods[0], "is a second way to authenticate, beside the user info in nats.url; give one")
	}
	if n.Username != "" && n.Password == "" {
		errs.add("nats.password", "is required with nats.username")
	}
	if n.Password != "" && n.Username == "" {
		errs.add("nats.username", "is required with nats.password")
	}
	if (n.TLSCAFile != "" || n.TLSCertFile != "" || n.TLSKeyFile != "") && !n.TLS {
		errs.add("nats.tls", "must be true when tls_ca_file, tls_cert_file or tls_key_file is set")
	}
	if (n.TLSCertFile == "") != (n.TLSKeyFile == "") {
		if n.TLSCertFile == "" {
			errs.add("nats.tls_cert_file", "is required with nats.tls_key_file")
		} else {
			errs.add("nats.tls_key_file", "is required with nats.tls_cert_file")
		}
	}
	if n.URL == "" && (len(methods) > 0 || n.TLS) {
		errs.add("nats.url", "is required with the NATS credentials and TLS settings (the server `sluice dev` embeds has neither)")
	}
	checkFile(errs, "nats.nkey_file", n.NKeyFile, func(b []byte) error {
		if _, err := nkeys.ParseDecoratedNKey(b); err != nil {
			if nkeys.IsValidPublicKey(strings.TrimSpace(string(b))) {
				return fmt.Errorf("holds a public key, not a seed")
			}
			return fmt.Errorf("holds no NKey seed")
		}
		return nil
	})
	checkFile(errs, "nats.creds_file", n.CredsFile, func(b []byte) error {
		// Without the JWT's armour the parser returns the whole text, a
		// bare seed too, which the client would then send as the JWT.
		if jwt, err := nkeys.ParseDecoratedJWT(b); err != nil || strings.Count(jwt, ".") != 2 || strings.ContainsAny(jwt, " \t\n") {
			return fmt.Errorf("holds no user JWT")
		}
		if _, err := nkeys.ParseDecoratedNKey(b); err != nil {
			return fmt.Errorf("holds no NKey seed")
		}
		return nil
	})
	checkFile(errs, "nats.tls_ca_file", n.TLSCAFile, func(b []byte) error {
		if !x509.NewCertPool().AppendCertsFromPEM(b) {
			return fmt.Errorf("holds no PEM certificate")
		}
		return nil
	})
	if n.TLSCertFile != "" && n.TLSKeyFile != "" {
		_, certErr := os.Stat(n.TLSCertFile)
		_, keyErr := os.Stat(n.TLSKeyFile)
		switch {
		case certErr != nil:
			errs.add("nats.tls_cert_file", certErr.Error())
		case keyErr != nil:
			errs.add("nats.tls_key_file", keyErr.Error())
		default:
			if _, err := tls.LoadX509KeyPair(n.TLSCertFile, n.TLSKeyFile); err != nil {
				errs.add("nats.tls_cert_file", "and nats.tls_key_file are not a certificate and its key: "+err.Error())
			}
		}
	}
}

// checkFile reads the file at path, when set, and checks its content;
// messages never quote the content.
func checkFile(errs *fieldErrors, field, path string, check func([]byte) error) {
	if path == "" {
		return
	}
	b, err := os.ReadFile(path)
	if err != nil {
		errs.add(field, err.Error())
		return
	}
	if err := check(b); err != nil {
		errs.add(field, fmt.Sprintf("%s %v", path, err))
	}
}
