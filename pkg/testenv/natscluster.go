package testenv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NATSCluster is a JetStream cluster of nats-server child processes on
// 127.0.0.1, each with its own ports and data directory, so that a test
// can kill, pause and restart nodes as production loses them. The servers
// run with their defaults (max_payload, election timeouts).
type NATSCluster struct {
	Nodes []*NATSNode
	bin   string
}

// NATSNode is one server of a NATSCluster. Its ports and data outlive its
// process: Start brings it back as the same member.
type NATSNode struct {
	Name string // the server name: n0, n1, …
	Port int    // clients
	Dir  string // the JetStream data and the server's log
	// ClusterPort takes the routes of the other nodes; HTTPPort serves
	// the monitoring endpoints (/healthz, /jsz).
	ClusterPort, HTTPPort int
	conf                  string
	proc                  *Process
	bin                   string
}

// BuildNATSServer builds nats-server from the module the build requires
// into dir and returns its path: the system's is often too old. It runs
// the go command, so it works inside this repository's workspace only.
func BuildNATSServer(dir string) (string, error) {
	out := filepath.Join(dir, "nats-server")
	build := exec.Command("go", "build", "-o", out, "github.com/nats-io/nats-server/v2")
	if b, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build nats-server: %v: %s", err, b)
	}
	return out, nil
}

// LaunchNATSCluster starts n nodes of bin and returns once each accepts
// client connections, before they have elected their JetStream leaders,
// as a cluster that has just been started: see WaitReady.
func LaunchNATSCluster(ctx context.Context, bin string, n int) (*NATSCluster, error) {
	c := &NATSCluster{bin: bin}
	for i := range n {
		node := &NATSNode{Name: "n" + strconv.Itoa(i), bin: bin}
		var err error
		if node.Dir, err = os.MkdirTemp("", "sluice-nats-"+node.Name+"-"); err != nil {
			c.Close()
			return nil, err
		}
		c.Nodes = append(c.Nodes, node)
		for _, p := range []*int{&node.Port, &node.ClusterPort, &node.HTTPPort} {
			if *p, err = FreePort(); err != nil {
				c.Close()
				return nil, err
			}
		}
	}
	for _, node := range c.Nodes {
		if err := node.writeConf(c.Nodes); err != nil {
			c.Close()
			return nil, err
		}
		if err := node.launch(); err != nil {
			c.Close()
			return nil, err
		}
	}
	for _, node := range c.Nodes {
		if err := node.waitListening(ctx); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// StartNATSCluster is LaunchNATSCluster, then WaitReady.
func StartNATSCluster(ctx context.Context, bin string, n int) (*NATSCluster, error) {
	c, err := LaunchNATSCluster(ctx, bin, n)
	if err != nil {
		return nil, err
	}
	if err := c.WaitReady(ctx, time.Minute); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (n *NATSNode) writeConf(all []*NATSNode) error {
	var routes []string
	for _, o := range all {
		if o != n {
			routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", o.ClusterPort))
		}
	}
	n.conf = filepath.Join(n.Dir, "nats.conf")
	conf := fmt.Sprintf(`server_name: %s
listen: 127.0.0.1:%d
http: 127.0.0.1:%d
jetstream {
  store_dir: %q
}
cluster {
  name: sluice
  listen: 127.0.0.1:%d
  routes: [%s]
}
`, n.Name, n.Port, n.HTTPPort, filepath.Join(n.Dir, "jetstream"), n.ClusterPort, strings.Join(routes, ", "))
	return os.WriteFile(n.conf, []byte(conf), 0o644)
}

func (n *NATSNode) launch() error {
	p, err := StartProcess("nats-server "+n.Name, filepath.Join(n.Dir, "nats.log"), nil, n.bin, "-c", n.conf)
	if err != nil {
		return err
	}
	n.proc = p
	return nil
}

func (n *NATSNode) waitListening(ctx context.Context) error {
	return n.proc.waitReady(ctx, 30*time.Second, func(context.Context) error {
		conn, err := net.DialTimeout("tcp", n.Addr(), time.Second)
		if err != nil {
			return err
		}
		return conn.Close()
	})
}

// Addr is the node's client address.
func (n *NATSNode) Addr() string { return "127.0.0.1:" + strconv.Itoa(n.Port) }

// URL is the node's client URL.
func (n *NATSNode) URL() string { return "nats://" + n.Addr() }

// Running reports whether the node's process runs (paused counts).
func (n *NATSNode) Running() bool { return n.proc != nil && !n.proc.Exited() }

// Log is what the node wrote, over all its runs.
func (n *NATSNode) Log() string {
	b, _ := os.ReadFile(filepath.Join(n.Dir, "nats.log"))
	return string(b)
}

// URLs are the client URLs of every node, comma-separated, as nats.url
// takes them.
func (c *NATSCluster) URLs() string {
	urls := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		urls[i] = n.URL()
	}
	return strings.Join(urls, ",")
}

// Kill ends node i with SIGKILL, as a crash or a lost machine, and waits
// until it is gone.
func (c *NATSCluster) Kill(i int) { c.Nodes[i].proc.Stop(syscall.SIGKILL, 10*time.Second) }

// Stop shuts node i down as an operator does (SIGTERM), killing it if it
// has not stopped within 30s.
func (c *NATSCluster) Stop(i int) { c.Nodes[i].proc.Stop(syscall.SIGTERM, 30*time.Second) }

// Pause stops node i with SIGSTOP: it holds its connections and answers
// nothing, as a node that hangs or is cut off.
func (c *NATSCluster) Pause(i int) { c.Nodes[i].proc.Signal(syscall.SIGSTOP) }

// Resume continues a paused node.
func (c *NATSCluster) Resume(i int) { c.Nodes[i].proc.Signal(syscall.SIGCONT) }

// Start starts a stopped or killed node i again on its ports with its
// data, and waits until it accepts clients (not until it has caught up:
// see Healthy).
func (c *NATSCluster) Start(ctx context.Context, i int) error {
	n := c.Nodes[i]
	if n.Running() {
		return fmt.Errorf("nats-server %s still runs", n.Name)
	}
	if err := n.launch(); err != nil {
		return err
	}
	return n.waitListening(ctx)
}

// Restart stops node i (SIGTERM) and starts it again, as an upgrade does.
func (c *NATSCluster) Restart(ctx context.Context, i int) error {
	c.Stop(i)
	return c.Start(ctx, i)
}

// Close kills every node and removes their data.
func (c *NATSCluster) Close() {
	for _, n := range c.Nodes {
		if n.proc != nil {
			n.proc.Stop(syscall.SIGKILL, 10*time.Second)
		}
		os.RemoveAll(n.Dir)
	}
}

// Index is the position in Nodes of the server named name, or -1.
func (c *NATSCluster) Index(name string) int {
	for i, n := range c.Nodes {
		if n.Name == name {
			return i
		}
	}
	return -1
}

// WaitReady waits until every running node reports itself healthy: the
// JetStream meta group has a leader and the node has caught up with it,
// and with every stream and consumer it holds.
func (c *NATSCluster) WaitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		if last = c.Healthy(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nats cluster not ready after %s: %v", timeout, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Healthy asks each running node's /healthz and /jsz: nil when every one
// is caught up with a JetStream meta leader, and with the streams and
// consumers it holds; else what is missing.
func (c *NATSCluster) Healthy(ctx context.Context) error {
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/healthz", n.HTTPPort), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return fmt.Errorf("%s: %w", n.Name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %d %s", n.Name, resp.StatusCode, strings.TrimSpace(string(body)))
		}
		var meta struct {
			Meta *struct {
				Leader string `json:"leader"`
			} `json:"meta_cluster"`
		}
		if err := n.jsz(ctx, &meta); err != nil {
			return fmt.Errorf("%s: %w", n.Name, err)
		}
		if meta.Meta == nil || meta.Meta.Leader == "" {
			return fmt.Errorf("%s: no jetstream meta leader", n.Name)
		}
	}
	return nil
}

func (n *NATSNode) jsz(ctx context.Context, v any) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/jsz", n.HTTPPort), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

// Connect opens a JetStream client to the cluster for a test's checks; the
// caller closes nc. Its pings notice within seconds a paused node, which
// answers nothing and keeps the connection open, and it moves on to
// another.
func (c *NATSCluster) Connect() (*nats.Conn, jetstream.JetStream, error) {
	nc, err := nats.Connect(c.URLs(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond),
		nats.PingInterval(time.Second), nats.MaxPingsOutstanding(2))
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// StreamLeader returns the index of the node that leads stream, from the
// stream's info: -1 while it has no leader.
func (c *NATSCluster) StreamLeader(ctx context.Context, js jetstream.JetStream, stream string) (int, error) {
	info, err := streamInfo(ctx, js, stream)
	if err != nil {
		return -1, err
	}
	return c.Index(info.Cluster.Leader), nil
}

// StreamHealthy is nil when stream has a leader and every other replica is
// current, else it says what is missing.
func (c *NATSCluster) StreamHealthy(ctx context.Context, js jetstream.JetStream, stream string) error {
	info, err := streamInfo(ctx, js, stream)
	if err != nil {
		return err
	}
	if info.Cluster.Leader == "" {
		return fmt.Errorf("stream %s has no leader", stream)
	}
	if want := info.Config.Replicas - 1; len(info.Cluster.Replicas) != want {
		return fmt.Errorf("stream %s has %d replicas besides its leader, want %d", stream, len(info.Cluster.Replicas), want)
	}
	for _, r := range info.Cluster.Replicas {
		if !r.Current || r.Offline {
			return fmt.Errorf("stream %s: replica %s is not current (offline %v, %d ops behind)", stream, r.Name, r.Offline, r.Lag)
		}
	}
	return nil
}

func streamInfo(ctx context.Context, js jetstream.JetStream, stream string) (*jetstream.StreamInfo, error) {
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, err
	}
	info := st.CachedInfo()
	if info.Cluster == nil {
		return nil, errors.New("stream " + stream + " is not clustered")
	}
	return info, nil
}

// NewNATSCluster starts a ready cluster of n nodes of bin for a test and
// kills it when the test ends.
func NewNATSCluster(t TB, bin string, n int) *NATSCluster {
	t.Helper()
	c, err := StartNATSCluster(context.Background(), bin, n)
	if err != nil {
		t.Fatalf("start nats cluster: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}
