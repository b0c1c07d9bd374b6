-- PostgreSQL JIT-compiles a statement whose estimated cost passes jit_above_cost (on by default
-- where the server has LLVM). The statements of these statement-level triggers read transition
-- tables, which the planner always estimates at 1,000 rows, so each was compiled (about a second
-- of LLVM work with inlining and optimisation) at every firing, whatever the rows: every
-- claim and acknowledgement of the sync engine and every recorded run could stall that long.
-- Compiling never pays off for statements this small.
ALTER FUNCTION apex_metrics_notify_pending() SET jit = off;
ALTER FUNCTION apex_metrics_panel_rollup_inserted() SET jit = off;
ALTER FUNCTION apex_metrics_panel_rollup_updated() SET jit = off;
ALTER FUNCTION apex_metrics_panel_rollup_deleted() SET jit = off;
