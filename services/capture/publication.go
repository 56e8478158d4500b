package capture

import (
	"fmt"
	"slices"

	"go.uber.org/zap"

	"github.com/sluicehq/sluice/services/capture/internal/source"
)

// logPublication tells the operator what EnsurePublication found and did.
func (s *Service) logPublication(p *source.Publication) {
	pub := zap.String("publication", s.cfg.Postgres.Publication)
	switch {
	case p.Created:
		s.log.Info("created the publication, marked as Sluice's: its tables follow postgres.tables", pub, zap.Strings("tables", s.cfg.Postgres.Tables))
	case p.Adopted:
		s.log.Info("the publication is exactly what Sluice creates: marked as Sluice's, its tables follow postgres.tables from now on", pub)
	case p.AllTables:
		s.log.Info("the publication is FOR ALL TABLES: capture skips the changes of tables not in postgres.tables", pub)
	case !p.Managed:
		s.log.Info("the publication is not Sluice's (no marker): its tables are left as they are; hand_over marks it as Sluice's",
			pub, zap.String("hand_over", fmt.Sprintf("COMMENT ON PUBLICATION %s IS '%s'", s.cfg.Postgres.Publication, source.PublicationMarker)))
	}
	for _, t := range p.Added {
		var sinks []string
		for _, sk := range s.cfg.Sinks {
			if slices.Contains(sk.Tables, t) {
				sinks = append(sinks, sk.Name)
			}
		}
		s.log.Warn("added the table to the publication: its changes flow from now on, but the rows it already holds reach Redis only through a backfill",
			pub, zap.String("table", t), zap.Strings("sinks", sinks), zap.String("backfill", "sluice backfill --config <file> --sink <sink> --table "+t))
	}
	if len(p.Removed) > 0 {
		s.log.Info("dropped the tables no longer in postgres.tables from the publication: their changes no longer leave Postgres",
			pub, zap.Strings("tables", p.Removed))
	}
	switch {
	case p.Unremoved != "":
		s.log.Warn("this role may not drop the tables no longer in postgres.tables from the publication: they stay published, capture receives their changes and skips them; run run_by_hand as the owner",
			pub, zap.Strings("tables", p.Unconfigured), zap.String("run_by_hand", p.Unremoved))
	case len(p.Unconfigured) > 0:
		s.log.Warn("the publication publishes tables not in postgres.tables: capture receives their changes and skips them",
			pub, zap.Strings("tables", p.Unconfigured))
	}
}
