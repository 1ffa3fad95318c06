-- The relay's claims walk outbox_pending from its start, where the entries
-- of rows published since the last vacuum pile up. Retention keeps the
-- table large (a day of rows), so the default trigger (20% of the table
-- changed) would let hundreds of thousands pile up: vacuum and analyze it
-- by row count instead.
ALTER TABLE outbox SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 5000
);
