package testenv

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"os"
	"path/filepath"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"

	"github.com/sluicehq/sluice/pkg/broker"
	"github.com/sluicehq/sluice/pkg/config"
)

// The ways a SecureNATS authenticates clients.
const (
	NATSUserPassword = "username"
	NATSToken        = "token"
	NATSNKey         = "nkey_file"
	NATSCreds        = "creds_file"
	NATSTLS          = "tls" // client certificates, verified
)

// NATSAuthMethods are all of them.
var NATSAuthMethods = []string{NATSUserPassword, NATSToken, NATSNKey, NATSCreds, NATSTLS}

// SecureNATS is an embedded NATS server with JetStream that lets in only
// clients that authenticate one way, with client settings it lets in
// (Good) and settings of the same kind it refuses (Bad).
type SecureNATS struct {
	*broker.Server
	Good, Bad config.NATS
}

// NewSecureNATS starts a server that authenticates clients by method for
// a test, and shuts it down when the test ends. Its key and certificate
// files are in a temporary directory.
func NewSecureNATS(t TB, method string) *SecureNATS {
	t.Helper()
	dir, err := os.MkdirTemp("", "sluice-nats-auth-")
	if err != nil {
		t.Fatalf("nats auth: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	auth, good, bad, err := natsAuth(method, dir)
	if err != nil {
		t.Fatalf("nats auth %s: %v", method, err)
	}
	srv, err := broker.Start(broker.Options{Auth: auth})
	if err != nil {
		t.Fatalf("start nats with %s: %v", method, err)
	}
	t.Cleanup(srv.Shutdown)
	good.URL, bad.URL = srv.URL(), srv.URL() // tls:// with TLS
	return &SecureNATS{Server: srv, Good: good, Bad: bad}
}

// Secret returns a random string for a password or token.
func Secret() string {
	b := make([]byte, 12)
	rand.Read(b)
	return "s3cr3t" + hex.EncodeToString(b)
}

func natsAuth(method, dir string) (auth broker.Auth, good, bad config.NATS, err error) {
	switch method {
	case NATSUserPassword:
		password := Secret()
		auth.Users = map[string]string{"sluice": password}
		good = config.NATS{Username: "sluice", Password: password}
		bad = config.NATS{Username: "sluice", Password: Secret()}
	case NATSToken:
		auth.Token = Secret()
		good, bad = config.NATS{Token: auth.Token}, config.NATS{Token: Secret()}
	case NATSNKey:
		var pub string
		if pub, good.NKeyFile, err = userSeedFile(dir, "user.nk"); err != nil {
			return
		}
		auth.NKeys = []string{pub}
		_, bad.NKeyFile, err = userSeedFile(dir, "stranger.nk")
	case NATSCreds:
		auth, good.CredsFile, bad.CredsFile, err = operatorAuth(dir)
	case NATSTLS:
		var srvFiles, stranger *TLSFiles
		if err = os.MkdirAll(filepath.Join(dir, "other"), 0o700); err != nil {
			return
		}
		if srvFiles, err = NewTLSFiles(dir); err != nil {
			return
		}
		if stranger, err = NewTLSFiles(filepath.Join(dir, "other")); err != nil {
			return
		}
		cert, e := tls.LoadX509KeyPair(srvFiles.Cert, srvFiles.Key)
		if e != nil {
			return auth, good, bad, e
		}
		pool := srvFiles.Pool()
		auth.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, MinVersion: tls.VersionTLS12}
		auth.VerifyClients = true
		// The CA's certificate serves the server and, with ClientAuth in
		// its uses, the client; another CA's is refused.
		good = config.NATS{TLS: true, TLSCAFile: srvFiles.CA, TLSCertFile: srvFiles.Cert, TLSKeyFile: srvFiles.Key}
		bad = config.NATS{TLS: true, TLSCAFile: srvFiles.CA, TLSCertFile: stranger.Cert, TLSKeyFile: stranger.Key}
	default:
		err = os.ErrInvalid
	}
	return
}

// userSeedFile writes a new user's NKey seed into dir/name.
func userSeedFile(dir, name string) (pub, file string, err error) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		return "", "", err
	}
	seed, _ := kp.Seed()
	pub, _ = kp.PublicKey()
	file = filepath.Join(dir, name)
	return pub, file, os.WriteFile(file, seed, 0o600)
}

// operatorAuth makes an operator, a system account and an account with
// JetStream, and the credentials files of a user of that account (good)
// and of a user of an account the operator never signed (bad).
func operatorAuth(dir string) (auth broker.Auth, good, bad string, err error) {
	op, _ := nkeys.CreateOperator()
	opPub, _ := op.PublicKey()
	opClaims := jwt.NewOperatorClaims(opPub)
	sys, _ := nkeys.CreateAccount()
	sysPub, _ := sys.PublicKey()
	opClaims.SystemAccount = sysPub
	if _, err = opClaims.Encode(op); err != nil {
		return
	}
	accounts := map[string]string{}
	sysClaims := jwt.NewAccountClaims(sysPub)
	sysClaims.Name = "SYS"
	if accounts[sysPub], err = sysClaims.Encode(op); err != nil {
		return
	}
	acc, _ := nkeys.CreateAccount()
	accPub, _ := acc.PublicKey()
	accClaims := jwt.NewAccountClaims(accPub)
	accClaims.Name = "SLUICE"
	accClaims.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	if accounts[accPub], err = accClaims.Encode(op); err != nil {
		return
	}
	auth = broker.Auth{Operator: opClaims, SystemAccount: sysPub, Accounts: accounts}
	if good, err = userCreds(dir, "user.creds", acc); err != nil {
		return
	}
	stranger, _ := nkeys.CreateAccount()
	bad, err = userCreds(dir, "stranger.creds", stranger)
	return
}

// userCreds writes the credentials file of a new user of account into
// dir/name.
func userCreds(dir, name string, account nkeys.KeyPair) (string, error) {
	user, _ := nkeys.CreateUser()
	pub, _ := user.PublicKey()
	token, err := jwt.NewUserClaims(pub).Encode(account)
	if err != nil {
		return "", err
	}
	seed, _ := user.Seed()
	creds, err := jwt.FormatUserConfig(token, seed)
	if err != nil {
		return "", err
	}
	file := filepath.Join(dir, name)
	return file, os.WriteFile(file, creds, 0o600)
}
