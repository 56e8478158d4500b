package publisher

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	published = promauto.NewCounter(prometheus.CounterOpts{
		Name: "sluice_capture_events_published_total",
		Help: "Change events JetStream acknowledged.",
	})
	publishSeconds = promauto.NewHistogram(prometheus.HistogramOpts{
		Name:    "sluice_capture_publish_seconds",
		Help:    "From publishing an event to JetStream's acknowledgement.",
		Buckets: prometheus.ExponentialBuckets(0.0002, 3, 10),
	})
	// Its buckets are the writer's sluice_writer_commit_to_redis_seconds':
	// the two split a change's way from Postgres to Redis at the stream.
	commitToStream = promauto.NewHistogram(prometheus.HistogramOpts{
		Name:    "sluice_capture_commit_to_stream_seconds",
		Help:    "From a change's commit in Postgres to JetStream's acknowledgement of the message holding it.",
		Buckets: prometheus.ExponentialBuckets(0.001, 3, 11),
	})
	inFlight = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "sluice_capture_in_flight",
		Help: "Events published and not yet acknowledged.",
	})
	orphans = promauto.NewCounter(prometheus.CounterOpts{
		Name: "sluice_capture_orphans_deleted_total",
		Help: "Stream messages deleted at a session's start because the message before them in their session was never stored (another capture published in between).",
	})
	confirmed = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "sluice_capture_confirmed_lsn",
		Help: "The WAL position up to which every event is in the stream: what capture confirms to the slot.",
	})
)
