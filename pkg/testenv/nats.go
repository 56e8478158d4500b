package testenv

import (
	"os"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluicehq/sluice/pkg/broker"
)

// NATS is an embedded NATS server with JetStream that can restart with
// its data.
type NATS struct {
	*broker.Server
	dir  string
	port int
}

// NewNATS starts an embedded NATS server with JetStream for a test and
// shuts it down when the test ends.
func NewNATS(t TB) *NATS {
	t.Helper()
	dir, err := os.MkdirTemp("", "sluice-nats-")
	if err != nil {
		t.Fatalf("start nats: %v", err)
	}
	port, err := FreePort()
	if err != nil {
		t.Fatalf("start nats: %v", err)
	}
	n := &NATS{dir: dir, port: port}
	if n.Server, err = broker.Start(broker.Options{Dir: dir, Port: port}); err != nil {
		t.Fatalf("start nats: %v", err)
	}
	t.Cleanup(func() {
		n.Shutdown()
		os.RemoveAll(dir)
	})
	return n
}

// Restart shuts the server down and starts it again on the same port with
// the same data, as after a crash or an upgrade.
func (n *NATS) Restart() error {
	n.Shutdown()
	s, err := broker.Start(broker.Options{Dir: n.dir, Port: n.port})
	if err != nil {
		return err
	}
	n.Server = s
	return nil
}

// JetStream connects a client to the server for a test and closes it when
// the test ends.
func (n *NATS) JetStream(t TB) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(n.URL())
	if err != nil {
		t.Fatalf("connect to nats: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return js
}
