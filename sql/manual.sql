-- Scenario 2: the "Create ticket" button, synchronous and idempotent.
INSERT INTO alerts (alert_id, title, severity) VALUES (400, 'analyst asked for a ticket', 1);
SELECT freescout_number > 0 AS has_number, ticket_url LIKE '%/conversation/%' AS has_url, alert_id
  FROM freescout_create_ticket(400);
SELECT (freescout_create_ticket(400)).ticket_id = (SELECT ticket_id FROM freescout_tickets WHERE alert_id = 400) AS same_ticket;
\! /usr/bin/python3 test/simctl.py count | grep -E 'alert:400|duplicates'

-- A ticket being created by the worker is returned, not created again.
INSERT INTO alerts (alert_id, title, severity) VALUES (401, 'auto and manual at once', 4);
SELECT alert_id FROM freescout_create_ticket(401);
\! /usr/bin/python3 test/simctl.py count | grep -E 'alert:401|duplicates'

SELECT incident_id FROM freescout_create_incident_ticket(300);
INSERT INTO incidents (incident_id, title, severity) VALUES (402, 'manual incident', 2);

-- Clear errors for what a caller can get wrong or run into.
SELECT * FROM freescout_create_ticket(999999);
SELECT * FROM freescout_create_incident_ticket(999999);

INSERT INTO alerts (alert_id, title, severity) VALUES (403, 'FreeScout down', 1), (404, 'bad key', 1), (405, 'bad mailbox', 1);
\! /usr/bin/python3 test/simctl.py fault '{"mode": "refuse", "duration_s": 1}'
SELECT * FROM freescout_create_ticket(403);
-- the request stays queued and goes out once FreeScout is back
SELECT wait_for($$EXISTS (SELECT 1 FROM freescout_tickets WHERE alert_id = 403)$$) AS delivered_later;
SELECT alert_id FROM freescout_create_ticket(403);

\! /usr/bin/python3 test/simctl.py config '{"api_key": "rotated-key"}'
SELECT * FROM freescout_create_ticket(404);
\! /usr/bin/python3 test/simctl.py config '{"api_key": "d5008ed483982d9b79d908b1bc97761e"}'
SELECT wait_for($$EXISTS (SELECT 1 FROM freescout_tickets WHERE alert_id = 404)$$) AS delivered_after_key_fix;

ALTER SYSTEM SET freescout.mailbox_id = 999;
SELECT pg_reload_conf();
SELECT pg_sleep(0.2);
SELECT * FROM freescout_create_ticket(405);
ALTER SYSTEM RESET freescout.mailbox_id;
SELECT pg_reload_conf();
SELECT pg_sleep(0.2);
-- a dead request is revived by the next call
SELECT alert_id FROM freescout_create_ticket(405);
SELECT incident_id FROM freescout_create_incident_ticket(402);
