package testenv

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisCluster is a Redis Cluster of masters without replicas, each a
// redis-server child process.
type RedisCluster struct {
	Nodes []*Redis
}

// StartRedisCluster starts n (at least 3) masters and joins them with
// redis-cli --cluster create.
func StartRedisCluster(ctx context.Context, n int) (*RedisCluster, error) {
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		return nil, fmt.Errorf("redis-cli not found in PATH; install it (Debian: apt-get install redis-tools)")
	}
	c := &RedisCluster{}
	for range n {
		r, err := StartRedis(ctx, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "3000")
		if err != nil {
			c.Close()
			return nil, err
		}
		c.Nodes = append(c.Nodes, r)
	}
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		c.Close()
		return nil, fmt.Errorf("redis-cli --cluster create: %v: %s", err, out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, r := range c.Nodes {
		for {
			rc := r.Client()
			info, err := rc.ClusterInfo(ctx).Result()
			rc.Close()
			if err == nil && strings.Contains(info, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				c.Close()
				return nil, fmt.Errorf("redis cluster not ok after 30s: %v %s", err, info)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return c, nil
}

// Addrs are the nodes' addresses.
func (c *RedisCluster) Addrs() []string {
	addrs := make([]string, len(c.Nodes))
	for i, r := range c.Nodes {
		addrs[i] = r.Addr
	}
	return addrs
}

// Client returns a cluster client.
func (c *RedisCluster) Client() *redis.ClusterClient {
	return redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
}

// Close stops every node.
func (c *RedisCluster) Close() {
	for _, r := range c.Nodes {
		r.Close()
	}
}

// NewRedisCluster starts a cluster for a test and stops it when the test ends.
func NewRedisCluster(t TB, n int) *RedisCluster {
	t.Helper()
	c, err := StartRedisCluster(context.Background(), n)
	if err != nil {
		t.Fatalf("start redis cluster: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// NewRedisTLS starts a TLS-only server for a test with certificates in dir.
func NewRedisTLS(t TB, dir string, args ...string) *Redis {
	t.Helper()
	files, err := NewTLSFiles(dir)
	if err != nil {
		t.Fatalf("tls files: %v", err)
	}
	r, err := StartRedisTLS(context.Background(), files, args...)
	if err != nil {
		t.Fatalf("start redis: %v", err)
	}
	t.Cleanup(r.Close)
	return r
}
