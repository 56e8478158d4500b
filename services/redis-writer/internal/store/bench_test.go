package store

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/pkg/config"
	"github.com/sluicehq/sluice/pkg/testenv"
	"github.com/sluicehq/sluice/services/redis-writer/internal/command"
)

// The cost of versioned writes: Apply (a script per key: GET the version,
// SET the value, SET the version) against a plain pipelined SET of the same
// keys and values, 500 commands a round trip.
func BenchmarkApply(b *testing.B) {
	ctx := context.Background()
	r := testenv.NewRedis(b)
	s, err := Open(ctx, config.Destination{Host: "127.0.0.1", Port: r.Port})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	value := []byte(strings.Repeat("x", 500))
	const batch = 500
	b.Run("versioned", func(b *testing.B) {
		cmds := make([]command.Command, batch)
		for i := 0; i < b.N; i += batch {
			for j := range cmds {
				cmds[j] = command.Command{Key: "k:" + strconv.Itoa((i+j)%100000), Value: value, Version: v(uint64(i+j), 0)}
			}
			if errs, _ := s.Apply(ctx, cmds); errs[0] != nil {
				b.Fatal(errs[0])
			}
		}
	})
	b.Run("plain-set", func(b *testing.B) {
		for i := 0; i < b.N; i += batch {
			pipe := s.client.Pipeline()
			for j := range batch {
				pipe.Set(ctx, "p:"+strconv.Itoa((i+j)%100000), value, 0)
			}
			if _, err := pipe.Exec(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
}
