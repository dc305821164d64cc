-- The ticket: subject, every template field, HTML escaping, tags, custom fields.
\! /usr/bin/python3 test/simctl.py mark
INSERT INTO alerts (alert_id, title, description, severity, computer, username, source_ip,
                    first_seen_at, event_count, mitre_attack_tactic, mitre_attack_technique)
VALUES (100, 'Brute force <script>alert("x")</script> & more',
        E'Line one <b>bold</b>\nline "two" it''s', 4, 'WS-<01>', 'CORP\bob', '10.0.0.5',
        '2026-12-01 10:00:00+00', 57, 'Credential Access', 'T1110 <Brute Force>');
SELECT wait_for($$NOT EXISTS (SELECT 1 FROM freescout_outbox WHERE alert_id = 100)$$);
\! /usr/bin/python3 test/simctl.py show alert:100
-- create first, then tags and custom fields with PUT (never tags inside create)
\! /usr/bin/python3 test/simctl.py requests
SELECT freescout_number > 0 AS has_number, ticket_url ~ '^http://127.0.0.1:28080/conversation/\d+$' AS url_ok, status
  FROM freescout_tickets WHERE alert_id = 100;

-- An alert with none of the optional fields still renders.
INSERT INTO alerts (alert_id, title, severity) VALUES (101, 'bare', 3);
SELECT wait_for($$NOT EXISTS (SELECT 1 FROM freescout_outbox WHERE alert_id = 101)$$);
\! /usr/bin/python3 test/simctl.py show alert:101
