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
	restarts = promauto.NewCounter(prometheus.CounterOpts{
		Name: "sluice_capture_restarts_total",
		Help: "Replication streams restarted after a failure (Postgres or NATS gone, a connection dropped).",
	})
)
