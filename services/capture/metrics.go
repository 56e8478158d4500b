package capture

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	slotLag = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "sluice_capture_slot_lag_bytes",
		Help: "WAL the slot retains beyond its confirmed position (read at each heartbeat).",
	})
	slotRead = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "sluice_capture_slot_read_timestamp_seconds",
		Help: "When the slot's lag was last read: while Postgres is unreachable the lag goes stale, and this says how stale.",
	})
	streamingGauge = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "sluice_capture_streaming",
		Help: "1 while capture streams from the slot; 0 while it connects or restarts.",
	})
	sourceRefused = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sluice_capture_source_refused",
		Help: "1 while capture refuses to stream because the slot is lost or the database is not the stream's source (reason: slot_lost, slot_invalidated, database_replaced, database_behind); see `sluice resync`.",
	}, []string{"reason"})
	leading = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "sluice_capture_leader",
		Help: "1 while this capture holds the lease and streams; 0 while it stands by.",
	})
	restarts = promauto.NewCounter(prometheus.CounterOpts{
		Name: "sluice_capture_restarts_total",
		Help: "Replication streams restarted after a failure (Postgres or NATS gone, a connection dropped).",
	})

	// What each sink has yet to apply, read from JetStream (package
	// backlog) whichever writers are alive.
	sinkBacklog = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sluice_sink_backlog_messages",
		Help: "Stream messages of a partition the sink has not acknowledged (waiting or in flight); each holds one or more changes.",
	}, []string{"sink", "partition"})
	sinkOldest = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sluice_sink_oldest_unapplied_seconds",
		Help: "Age of the oldest message of a partition the sink has not acknowledged; 0 when none waits.",
	}, []string{"sink", "partition"})
	sinkDeadLetters = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sluice_sink_dead_letters",
		Help: "Dead letters of the sink waiting in the dead-letter stream (see `sluice dlq`).",
	}, []string{"sink"})
	sinkWriters = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sluice_sink_writers",
		Help: "Live writers in the sink's writer group.",
	}, []string{"sink"})
	sinkWritersExpected = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sluice_sink_writers_expected",
		Help: "The writers the sink should have running (sinks[].writers); 0 when not set.",
	}, []string{"sink"})

	// Backfills, read from their jobs; a finished backfill's rows leave
	// the metrics with it.
	backfillActive = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sluice_backfill_active",
		Help: "Backfills of the table into the sink that are pending or running.",
	}, []string{"sink", "table"})
	backfillDone = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sluice_backfill_rows_done",
		Help: "Rows the running backfills of the table into the sink have read.",
	}, []string{"sink", "table"})
	backfillEstimated = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sluice_backfill_rows_estimated",
		Help: "Rows the running backfills of the table into the sink are expected to read (the planner's estimate).",
	}, []string{"sink", "table"})
)
