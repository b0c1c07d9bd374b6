-- apex_metrics_mark_changed only ever bumps version when a data column changed, but it ran for
-- every updated row: also for the sync engine's claims and acknowledgements, which set
-- bookkeeping columns only (two row updates per delivered row). Fire it only for updates that
-- set a data column or version; what it does for them is unchanged.
DROP TRIGGER apex_metrics_mark_changed ON campaign_metrics;
CREATE TRIGGER apex_metrics_mark_changed
    BEFORE UPDATE OF campaign_id, run_id, phase, agents_total, agents_successful,
        assets_generated, tokens_in, tokens_out, cost_usd, latency_p95_ms, latency_avg_ms,
        success_rate, created_at, version
    ON campaign_metrics
    FOR EACH ROW EXECUTE FUNCTION apex_metrics_mark_changed();
