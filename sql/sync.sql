-- Reconciliation repairs what webhooks missed, and pushes what never left.
-- FreeScout closes alert 210's ticket, but the webhook is lost.
\! /usr/bin/python3 test/simctl.py act alert:210 status status=closed user=9
\! /usr/bin/python3 test/simctl.py act alert:210 assign user=9
\! /usr/bin/python3 test/simctl.py act alert:210 note text='Found during sync' user=9
SELECT status FROM alerts WHERE alert_id = 210;
SELECT freescout_sync() - 'pages' - 'checked' AS sync;
SELECT a.status, a.resolution, t.status AS ticket_status, t.assignee_id, t.assignee_name
  FROM alerts a JOIN freescout_tickets t USING (alert_id) WHERE alert_id = 210;
SELECT direction, author, body FROM freescout_worklog WHERE alert_id = 210;
-- a second run finds nothing new to do
SELECT freescout_sync() ->> 'updated' AS updated, freescout_sync() ->> 'notes_added' AS notes;

-- A SIEM change made while the integration was off is pushed at the next sync.
ALTER SYSTEM SET freescout.enabled = off;
SELECT pg_reload_conf();
SELECT pg_sleep(0.2);
UPDATE alerts SET status = 'false_positive' WHERE alert_id = 211;
SELECT count(*) AS queued_while_off FROM freescout_outbox WHERE alert_id = 211;
ALTER SYSTEM RESET freescout.enabled;
SELECT pg_reload_conf();
SELECT pg_sleep(0.2);
SELECT freescout_sync() ->> 'pushed' AS pushed;
SELECT wait_for($$(SELECT status = 'closed' FROM freescout_tickets WHERE alert_id = 211)$$) AS pushed_to_freescout;
\! /usr/bin/python3 test/simctl.py show alert:211 | sed -n 3p
SELECT last_result - 'pages' - 'checked' AS last_result FROM freescout_sync_state;

-- A SIEM status with no FreeScout mapping is logged, never silently dropped.
UPDATE alerts SET status = 'escalated_to_ir' WHERE alert_id = 210;
SELECT wait_for($$NOT EXISTS (SELECT 1 FROM freescout_outbox WHERE alert_id = 210)$$);
SELECT event_type, success, error_message, payload->>'method' AS method FROM freescout_sync_log
 WHERE alert_id = 210 AND event_type = 'status_change' ORDER BY log_id DESC LIMIT 1;
INSERT INTO freescout_status_map VALUES ('escalated_to_ir', 'pending');
UPDATE alerts SET status = 'resolved' WHERE alert_id = 210;
UPDATE alerts SET status = 'escalated_to_ir' WHERE alert_id = 210;
SELECT wait_for($$(SELECT status = 'pending' FROM freescout_tickets WHERE alert_id = 210)$$) AS mapped_now;

-- A status change the outbox never heard of (made here with triggers off)
-- while a status job is in flight is caught when that job is recorded.
\! /usr/bin/python3 test/simctl.py config '{"latency_ms": 700}'
UPDATE alerts SET status = 'resolved' WHERE alert_id = 210;
SELECT wait_for($$EXISTS (SELECT 1 FROM freescout_outbox WHERE alert_id = 210 AND state = 'inflight')$$) AS in_flight;
SET session_replication_role = replica;
UPDATE alerts SET status = 'escalated_to_ir' WHERE alert_id = 210;
RESET session_replication_role;
\! /usr/bin/python3 test/simctl.py config '{"latency_ms": 0}'
SELECT wait_for($$(SELECT status = 'pending' FROM freescout_tickets WHERE alert_id = 210)$$) AS caught_up;
