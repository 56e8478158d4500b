package rediswriter

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	changes = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_writer_changes_total",
		Help: "Changes handled, by outcome: applied, stale (older than the key's version, skipped), filtered, failed (to be retried), dead_lettered.",
	}, []string{"sink", "outcome"})
	batchSize = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "sluice_writer_batch_size",
		Help:    "Commands per pipelined Redis round trip.",
		Buckets: prometheus.ExponentialBuckets(1, 4, 8),
	}, []string{"sink"})
	redisSeconds = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "sluice_writer_redis_seconds",
		Help:    "Duration of one pipelined Redis round trip.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 4, 9),
	}, []string{"sink"})
	commitToRedis = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "sluice_writer_commit_to_redis_seconds",
		Help:    "From a change's commit in Postgres to Redis's reply to its write.",
		Buckets: prometheus.ExponentialBuckets(0.001, 3, 11),
	}, []string{"sink"})
	partitionsOwned = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sluice_writer_partitions",
		Help: "Partitions this writer owns.",
	}, []string{"sink"})
	redisUp = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sluice_writer_redis_up",
		Help: "1 while the sink's Redis takes writes; 0 while it is unavailable and the writer holds its partitions.",
	}, []string{"sink"})
	resets = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_writer_redis_resets_total",
		Help: "Times this writer found that the sink's Redis lost acknowledged writes (its marker gone, or its replication id changed).",
	}, []string{"sink"})
	redisEvicts = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sluice_writer_redis_evicts",
		Help: "1 when the sink's Redis may evict keys (its maxmemory-policy is not noeviction): see the README for what holds then.",
	}, []string{"sink"})
	pending = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sluice_writer_pending",
		Help: "Messages of an owned partition not yet acknowledged (waiting or in flight).",
	}, []string{"sink", "partition"})
)

// sinkMetrics are one sink's series, their labels resolved once: the
// writer updates them for every change.
type sinkMetrics struct {
	applied, stale, filtered, failed, deadLettered prometheus.Counter
	batch, redis, commitToRedis                    prometheus.Observer
}

func newSinkMetrics(sink string) *sinkMetrics {
	resets.WithLabelValues(sink) // at 0 from the start, for rates and panels
	return &sinkMetrics{
		applied:       changes.WithLabelValues(sink, "applied"),
		stale:         changes.WithLabelValues(sink, "stale"),
		filtered:      changes.WithLabelValues(sink, "filtered"),
		failed:        changes.WithLabelValues(sink, "failed"),
		deadLettered:  changes.WithLabelValues(sink, "dead_lettered"),
		batch:         batchSize.WithLabelValues(sink),
		redis:         redisSeconds.WithLabelValues(sink),
		commitToRedis: commitToRedis.WithLabelValues(sink),
	}
}
