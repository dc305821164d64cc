-- Nothing is granted to PUBLIC; secrets stay with superusers.
CREATE ROLE siem_api LOGIN;
SET ROLE siem_api;
SHOW freescout.api_key;
SELECT current_setting('freescout.webhook_secret');
SELECT count(*) FROM freescout_tickets;
SELECT count(*) FROM freescout_outbox;
SELECT * FROM freescout_create_ticket(202);
SELECT freescout_webhook('{}', 'x', 'convo.status');
RESET ROLE;

-- What the SIEM backend needs is granted explicitly.
GRANT EXECUTE ON FUNCTION freescout_create_ticket(bigint), freescout_webhook(text, text, text) TO siem_api;
SET ROLE siem_api;
SELECT alert_id FROM freescout_create_ticket(202);
RESET ROLE;
REVOKE ALL ON FUNCTION freescout_create_ticket(bigint), freescout_webhook(text, text, text) FROM siem_api;
DROP ROLE siem_api;

-- The SIEM's ingest role needs no privilege on the bridge's objects: its
-- alerts are queued all the same.
CREATE ROLE siem_ingest;
GRANT INSERT ON alerts TO siem_ingest;
SET ROLE siem_ingest;
INSERT INTO alerts (alert_id, title, severity) VALUES (950, 'from a plain ingest role', 4);
SELECT count(*) FROM freescout_outbox;
RESET ROLE;
SELECT wait_for($$EXISTS (SELECT 1 FROM freescout_tickets WHERE alert_id = 950)$$) AS queued_and_sent;
REVOKE ALL ON alerts FROM siem_ingest;
DROP ROLE siem_ingest;

-- PUBLIC holds no privilege on any object of the extension but the filter
-- the alert trigger's WHEN clause calls.
SELECT name FROM (
    SELECT relname::text AS name, (aclexplode(relacl)).grantee FROM pg_class WHERE relname LIKE 'freescout%'
    UNION ALL
    SELECT proname::text, (aclexplode(proacl)).grantee FROM pg_proc WHERE proname LIKE 'freescout%') g
 WHERE grantee = 0;
SELECT proname FROM pg_proc WHERE proname LIKE 'freescout%' AND proacl IS NULL ORDER BY 1;

-- SECURITY DEFINER functions pin their search_path.
SELECT proname, proconfig FROM pg_proc
 WHERE proname LIKE 'freescout%' AND prosecdef ORDER BY 1;

-- The API key and the webhook secret appear in no table the bridge writes.
SELECT count(*) AS leaks FROM freescout_sync_log
 WHERE payload::text ~ 'd5008ed483982d9b79d908b1bc97761e|94b2eb8ab4323a9ad12989f5aaa7c7d2'
    OR error_message ~ 'd5008ed483982d9b79d908b1bc97761e|94b2eb8ab4323a9ad12989f5aaa7c7d2';
SELECT count(*) AS leaks FROM freescout_outbox
 WHERE coalesce(payload::text, '') || coalesce(last_error, '') ~ 'd5008ed483982d9b79d908b1bc97761e';
-- nor in what reached FreeScout other than the key header itself
\! /usr/bin/python3 test/simctl.py requests | grep -c d5008ed483982d9b79d908b1bc97761e
