-- Alerts at or above the threshold become one conversation each.
\! /usr/bin/python3 test/simctl.py mark
INSERT INTO alerts (alert_id, title, severity)
VALUES (200, 'low', 1), (201, 'medium', 2), (202, 'high', 3), (203, 'critical', 4);
SELECT wait_for($$NOT EXISTS (SELECT 1 FROM freescout_outbox WHERE alert_id BETWEEN 200 AND 203)$$);
SELECT a.alert_id, t.ticket_id IS NOT NULL AS has_ticket, a.freescout_ticket_id = t.ticket_id AS linked
  FROM alerts a LEFT JOIN freescout_tickets t USING (alert_id)
 WHERE a.alert_id BETWEEN 200 AND 203 ORDER BY 1;
\! /usr/bin/python3 test/simctl.py count

-- Every call is logged: direction, event, status, latency, success; no secret.
SELECT direction, event_type, http_status, success, latency_ms > 0 AS timed, error_message,
       payload ->> 'method' AS method, regexp_replace(payload ->> 'path', '/\d+', '/N') AS path
  FROM freescout_sync_log WHERE alert_id = 203 ORDER BY log_id;

-- The insert path queues nothing below the threshold, or when switched off.
ALTER SYSTEM SET freescout.auto_create_on_alert = off;
SELECT pg_reload_conf();
SELECT pg_sleep(0.2);
INSERT INTO alerts (alert_id, title, severity) VALUES (204, 'critical but auto-create is off', 4);
SELECT count(*) AS queued FROM freescout_outbox WHERE alert_id = 204;
ALTER SYSTEM RESET freescout.auto_create_on_alert;
SELECT pg_reload_conf();
SELECT pg_sleep(0.2);

-- A rolled-back insert leaves no job behind.
BEGIN;
INSERT INTO alerts (alert_id, title, severity) VALUES (205, 'rolled back', 4);
SELECT count(*) AS queued_inside FROM freescout_outbox WHERE alert_id = 205;
ROLLBACK;
SELECT count(*) AS queued_after FROM freescout_outbox WHERE alert_id = 205;

-- A rolled-back savepoint forgets its alerts, and only those.
BEGIN;
INSERT INTO alerts (alert_id, title, severity) VALUES (206, 'kept', 4);
SAVEPOINT s;
INSERT INTO alerts (alert_id, title, severity) VALUES (207, 'rolled back to savepoint', 4);
ROLLBACK TO SAVEPOINT s;
INSERT INTO alerts (alert_id, title, severity) VALUES (208, 'after the savepoint', 4);
COMMIT;
SELECT wait_for($$(SELECT count(*) = 2 FROM freescout_tickets WHERE alert_id BETWEEN 206 AND 208)$$) AS both_delivered;
SELECT alert_id FROM freescout_tickets WHERE alert_id BETWEEN 206 AND 208 ORDER BY 1;
SELECT count(*) AS queued_for_207 FROM freescout_outbox WHERE alert_id = 207;

-- 503 with Retry-After: retried after the pause, then created once.
\! /usr/bin/python3 test/simctl.py mark
\! /usr/bin/python3 test/simctl.py fault '{"mode": "status", "status": 503, "retry_after": "1", "count": 1, "path_regex": "^POST /api/conversations$"}'
INSERT INTO alerts (alert_id, title, severity) VALUES (210, 'retried after 503', 4);
SELECT wait_for($$EXISTS (SELECT 1 FROM freescout_tickets WHERE alert_id = 210)$$);
SELECT event_type, http_status, success, error_message FROM freescout_sync_log
 WHERE alert_id = 210 AND event_type IN ('create', 'lookup') ORDER BY log_id;
SELECT extract(epoch FROM max(created_at) - min(created_at)) >= 0.9 AS waited_retry_after
  FROM freescout_sync_log WHERE alert_id = 210 AND event_type = 'create';

-- The answer to a create is lost after FreeScout committed it: the retry
-- finds the conversation by its marker and adopts it, never creating twice.
\! /usr/bin/python3 test/simctl.py fault '{"mode": "drop_after_commit", "count": 1, "path_regex": "^POST /api/conversations$"}'
INSERT INTO alerts (alert_id, title, severity) VALUES (211, 'answer lost', 4);
SELECT wait_for($$EXISTS (SELECT 1 FROM freescout_tickets WHERE alert_id = 211)$$);
SELECT event_type, http_status, success, payload->>'adopted' AS adopted FROM freescout_sync_log
 WHERE alert_id = 211 AND event_type IN ('create', 'lookup') ORDER BY log_id;
\! /usr/bin/python3 test/simctl.py show alert:211 | head -1

-- A request FreeScout rejects for good is dead-lettered with its reason.
ALTER SYSTEM SET freescout.mailbox_id = 999;
SELECT pg_reload_conf();
SELECT pg_sleep(0.2);
INSERT INTO alerts (alert_id, title, severity) VALUES (212, 'unknown mailbox', 4);
SELECT wait_for($$EXISTS (SELECT 1 FROM freescout_outbox WHERE alert_id = 212 AND state = 'dead')$$);
SELECT kind, state, attempts, last_error FROM freescout_outbox WHERE alert_id = 212;
ALTER SYSTEM RESET freescout.mailbox_id;
SELECT pg_reload_conf();
SELECT pg_sleep(0.2);
SELECT freescout_retry_dead();
SELECT wait_for($$EXISTS (SELECT 1 FROM freescout_tickets WHERE alert_id = 212)$$) AS delivered_after_fix;
\! /usr/bin/python3 test/simctl.py count
