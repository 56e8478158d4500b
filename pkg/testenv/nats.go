package testenv

import "github.com/sluicehq/sluice/pkg/broker"

// NewNATS starts an embedded NATS server with JetStream for a test and
// shuts it down when the test ends.
func NewNATS(t TB) *broker.Server {
	t.Helper()
	s, err := broker.Start(broker.Options{})
	if err != nil {
		t.Fatalf("start nats: %v", err)
	}
	t.Cleanup(s.Shutdown)
	return s
}
