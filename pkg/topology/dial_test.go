package topology

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sluicehq/sluice/pkg/broker"
	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/testenv"
)

// TestDialAuth: for each way NATS authenticates clients, Dial with the
// right settings gets a working JetStream (stream, consumer, a message
// through), and with wrong ones an error that says the server refused
// them.
func TestDialAuth(t *testing.T) {
	for _, method := range testenv.NATSAuthMethods {
		t.Run(method, func(t *testing.T) {
			srv := testenv.NewSecureNATS(t, method)
			ctx := context.Background()

			nc, js, err := Dial(srv.Good, "test", zap.NewNop())
			if err != nil {
				t.Fatalf("right credentials: %v", err)
			}
			defer nc.Close()
			topo := Topology{Stream: "S", Partitions: 2, Replicas: 1}
			sink := config.Sink{Name: "cache", AckWait: time.Second, Failover: 3 * time.Second}
			if _, err := topo.Ensure(ctx, js, sink); err != nil {
				t.Fatal(err)
			}
			if _, err := js.Publish(ctx, topo.Subject(0), []byte("x")); err != nil {
				t.Fatal(err)
			}
			cons, err := js.CreateOrUpdateConsumer(ctx, "S", jetstream.ConsumerConfig{})
			if err != nil {
				t.Fatal(err)
			}
			if msg, err := cons.Next(); err != nil || string(msg.Data()) != "x" {
				t.Fatalf("read the message back: %v", err)
			}

			_, _, err = Dial(srv.Bad, "test", zap.NewNop())
			if err == nil {
				t.Fatal("wrong credentials: connected")
			}
			want := "the server refused the credentials"
			if method == testenv.NATSTLS {
				want = "check nats.tls_ca_file, tls_cert_file and tls_key_file"
			}
			if !strings.Contains(err.Error(), want) {
				t.Errorf("wrong credentials: %q does not say %q", err, want)
			}
			for _, s := range srv.Bad.Secrets() {
				if strings.Contains(err.Error(), s) {
					t.Errorf("wrong credentials: %q shows the secret", err)
				}
			}
		})
	}
}

// TestDialHidesSecrets: no password or token of the settings appears in
// Dial's errors or logs, wherever it is given: in the fields, in the user
// info of one or several URLs, in a URL the parser refuses.
func TestDialHidesSecrets(t *testing.T) {
	srv := testenv.NewSecureNATS(t, testenv.NATSUserPassword)
	down, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	secret := testenv.Secret()
	unreachable := fmt.Sprintf("127.0.0.1:%d", down)
	refusing := strings.TrimPrefix(srv.URL(), "nats://")
	for _, host := range []string{unreachable, refusing} {
		for name, n := range map[string]config.NATS{
			"password field":    {URL: "nats://" + host, Username: "sluice", Password: secret},
			"token field":       {URL: "nats://" + host, Token: secret},
			"password in url":   {URL: "nats://sluice:" + secret + "@" + host},
			"token in url":      {URL: "nats://" + secret + "@" + host},
			"several urls":      {URL: "nats://a:" + secret + "@" + unreachable + ", nats://sluice:" + secret + "@" + host},
			"no scheme":         {URL: "sluice:" + secret + "@" + host},
			"unparseable url":   {URL: "nats://sluice:" + secret + "/x@" + host},
			"escaped in url":    {URL: "nats://sluice:" + url.PathEscape(secret+"/%") + "@" + host},
			"unparseable token": {URL: "nats://" + secret + "%zz@" + host},
		} {
			t.Run(name, func(t *testing.T) {
				core, logs := observer.New(zap.DebugLevel)
				nc, _, err := Dial(n, "test", zap.New(core))
				if err == nil {
					nc.Close()
					t.Fatal("connected")
				}
				var all strings.Builder
				all.WriteString(err.Error())
				for _, e := range logs.All() {
					fmt.Fprintf(&all, "\n%s %v", e.Message, e.ContextMap())
				}
				if strings.Contains(all.String(), secret) || strings.Contains(all.String(), url.PathEscape(secret+"/%")) {
					t.Errorf("the secret shows:\n%s", all.String())
				}
			})
		}
	}
}

func TestRedactUnparseable(t *testing.T) {
	for in, want := range map[string]string{
		"nats://app:pa/ss@a:4222,nats://b:4222": "(a URL that cannot be parsed),nats://b:4222",
		"app:s3cret@a:4222":                     "nats://app:xxxxx@a:4222",
		"a:4222":                                "a:4222",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

// A server in this process is dialled without a socket: its URL is not
// even asked.
func TestDialInProcess(t *testing.T) {
	srv, err := broker.Start(broker.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	n := config.NATS{URL: fmt.Sprintf("nats://127.0.0.1:%d", port), InProcess: srv}
	nc, js, err := Dial(n, "test", zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := js.AccountInfo(context.Background()); err != nil {
		t.Fatal(err)
	}
}
