-- Dataverse's DateTime ends at 9999-12-31 and Python cannot load a later timestamp, while
-- PostgreSQL accepts years up to 294276: a row written past 9999 by SQL would be stuck in the
-- queue. Bound created_at on both sides, as the metric model does.
ALTER TABLE campaign_metrics
    DROP CONSTRAINT campaign_metrics_created_at_check,
    ADD CONSTRAINT campaign_metrics_created_at_check
        CHECK (created_at >= '1753-01-01 00:00:00+00' AND created_at < '10000-01-01 00:00:00+00');
