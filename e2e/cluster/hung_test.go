package cluster

import (
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/sluicehq/sluice/e2e/harness"
	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/topology"
)

// A service connected to a node that hangs (SIGSTOP: its connections stay
// open, nothing answers) moves to another node of the cluster by itself,
// long before the node would come back or the operating system would give
// up on the connection.
func TestServicesLeaveAHungNode(t *testing.T) {
	e := harness.NewClusterEnv(t, 3)
	nc, _, err := topology.Dial(config.NATS{URL: e.Cluster.URLs()}, "test", zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	hung := -1
	for i, n := range e.Cluster.Nodes {
		if n.Addr() == nc.ConnectedAddr() {
			hung = i
		}
	}
	if hung < 0 {
		t.Fatalf("connected to %s, none of the nodes", nc.ConnectedAddr())
	}
	e.Cluster.Pause(hung)
	defer e.Cluster.Resume(hung)
	began := time.Now()
	harness.Eventually(t, 60*time.Second, func() string {
		if at := nc.ConnectedAddr(); !nc.IsConnected() || at == e.Cluster.Nodes[hung].Addr() {
			return "still on the hung node " + e.Cluster.Nodes[hung].Name
		}
		return ""
	})
	t.Logf("moved from the hung node to %s after %s", nc.ConnectedAddr(), time.Since(began).Round(100*time.Millisecond))
}
