-- The settings mirror the spec's .env; secrets are hidden.
SELECT name, setting, context FROM pg_settings WHERE name LIKE 'freescout.%' ORDER BY name;
SELECT name FROM pg_settings WHERE name IN ('freescout.api_key', 'freescout.webhook_secret');

-- Bad values are refused when set, not at the first request.
ALTER SYSTEM SET freescout.url = 'ftp://helpdesk.example.com';
ALTER SYSTEM SET freescout.url = 'https://helpdesk.example.com/?x=1';
ALTER SYSTEM SET freescout.custom_fields = 'alert_id:3,colour:9';
ALTER SYSTEM SET freescout.custom_fields = 'alert_id:three';
ALTER SYSTEM SET freescout.auto_create_severity_min = 5;

-- HTTPS only: with allow_http off, an http:// URL is not used at all.
\! /usr/bin/python3 test/simctl.py mark
ALTER SYSTEM SET freescout.allow_http = off;
SELECT pg_reload_conf();
SELECT pg_sleep(0.3);
SHOW freescout.allow_http;
INSERT INTO alerts (title, severity) VALUES ('sent only over https', 4);
SELECT freescout_create_ticket(alert_id) FROM alerts WHERE title = 'sent only over https';
SELECT pg_sleep(0.5);
\! /usr/bin/python3 test/simctl.py requests
SELECT count(*) AS tickets FROM freescout_tickets t JOIN alerts a USING (alert_id)
 WHERE a.title = 'sent only over https';

-- A reload (SIGHUP) turns it back on; the queued alert goes out.
ALTER SYSTEM RESET freescout.allow_http;
SELECT pg_reload_conf();
SELECT wait_for($$EXISTS (SELECT 1 FROM freescout_tickets t JOIN alerts a USING (alert_id)
                          WHERE a.title = 'sent only over https')$$) AS delivered_after_reload;
\! /usr/bin/python3 test/simctl.py requests
