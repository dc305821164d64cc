-- FreeScout -> SIEM: signed webhooks in both formats.
-- The reference test vector of the real module (base64 HMAC-SHA1):
SELECT freescout_webhook('{"id":1,"number":1,"status":"closed","subject":"Caf\u00e9 \/ test"}',
                         '3d3RbuWrUoyObB9XyKZ5WUfGlqo=', 'convo.status') ->> 'success' AS verified;

-- An analyst works alert 202's ticket; we replay what FreeScout sent.
\! /usr/bin/python3 test/simctl.py act alert:202 assign user=7
\set body `/usr/bin/python3 test/simctl.py webhook body`
\set sig `/usr/bin/python3 test/simctl.py webhook signature`
\set event `/usr/bin/python3 test/simctl.py webhook event`
SELECT :'event' AS event, freescout_webhook(:'body', :'sig', :'event') - 'conversation_id' - 'ticket_id' AS result;
SELECT assignee_id, assignee_name FROM freescout_tickets WHERE alert_id = 202;

\! /usr/bin/python3 test/simctl.py act alert:202 note text='Checked <b>WS-01</b>: benign & closed' user=7
\set body `/usr/bin/python3 test/simctl.py webhook body`
\set sig `/usr/bin/python3 test/simctl.py webhook signature`
\set event `/usr/bin/python3 test/simctl.py webhook event`
SELECT :'event' AS event, freescout_webhook(:'body', :'sig', :'event') ->> 'notes_added' AS notes_added;
-- FreeScout retries deliveries with the original payload: nothing doubles.
SELECT freescout_webhook(:'body', :'sig', :'event') ->> 'notes_added' AS notes_added_on_replay;
SELECT direction, thread_type, author, body FROM freescout_worklog WHERE alert_id = 202;

\! /usr/bin/python3 test/simctl.py mark
\! /usr/bin/python3 test/simctl.py act alert:202 status status=closed user=7
\set body `/usr/bin/python3 test/simctl.py webhook body`
\set sig `/usr/bin/python3 test/simctl.py webhook signature`
\set event `/usr/bin/python3 test/simctl.py webhook event`
SELECT :'event' AS event, freescout_webhook(:'body', :'sig', :'event') ->> 'status_changed' AS status_changed;
SELECT status, resolution FROM alerts WHERE alert_id = 202;
SELECT status FROM freescout_tickets WHERE alert_id = 202;
-- no echo: the change came from FreeScout, so nothing goes back
SELECT count(*) AS queued FROM freescout_outbox WHERE alert_id = 202;
SELECT pg_sleep(0.3);
\! /usr/bin/python3 test/simctl.py requests
\set closed_body :body
\set closed_sig :sig

\! /usr/bin/python3 test/simctl.py act alert:202 status status=active user=7
\set body `/usr/bin/python3 test/simctl.py webhook body`
\set sig `/usr/bin/python3 test/simctl.py webhook signature`
SELECT freescout_webhook(:'body', :'sig', 'convo.status') ->> 'status_changed' AS reopened;
SELECT status FROM alerts WHERE alert_id = 202;
-- a late retry of the older "closed" delivery does not win over the reopen
SELECT freescout_webhook(:'closed_body', :'closed_sig', 'convo.status') ->> 'stale' AS stale;
SELECT status FROM alerts WHERE alert_id = 202;

-- The spec's envelope, signed with hex HMAC-SHA256.
SELECT freescout_id AS conv FROM freescout_tickets WHERE alert_id = 203 \gset
SELECT format('{"event":"conversation.status_changed","data":{"conversation":{"id":%s,"status":3,"previous_status":1}},"timestamp":"2026-12-04T10:00:00Z"}', :conv) AS spec_body \gset
SELECT encode(hmac(:'spec_body', '94b2eb8ab4323a9ad12989f5aaa7c7d2', 'sha256'), 'hex') AS spec_sig \gset
SELECT freescout_webhook(:'spec_body', :'spec_sig') ->> 'status_changed' AS spec_status_changed;
SELECT status, resolution FROM alerts WHERE alert_id = 203;
SELECT format('{"event":"conversation.note_added","data":{"conversation_id":%s,"thread":{"type":"note","text":"<p>From the <i>spec</i> format</p>","created_by":1,"created_at":"2026-12-04T10:15:00Z"}}}', :conv) AS spec_note \gset
SELECT encode(hmac(:'spec_note', '94b2eb8ab4323a9ad12989f5aaa7c7d2', 'sha256'), 'hex') AS spec_note_sig \gset
SELECT freescout_webhook(:'spec_note', :'spec_note_sig') ->> 'notes_added' AS spec_notes;
SELECT freescout_webhook(:'spec_note', :'spec_note_sig') ->> 'notes_added' AS spec_notes_replayed;
SELECT body FROM freescout_worklog WHERE alert_id = 203;

-- Ignored, not failed: unknown conversation, other events, odd shapes.
SELECT encode(hmac('{"id":999999,"status":"closed"}', '94b2eb8ab4323a9ad12989f5aaa7c7d2', 'sha1'), 'base64') AS s \gset
SELECT freescout_webhook('{"id":999999,"status":"closed"}', :'s', 'convo.status');
SELECT freescout_webhook('{"id":999999,"status":"closed"}', :'s', 'customer.created');
SELECT encode(hmac('[1,2,3]', '94b2eb8ab4323a9ad12989f5aaa7c7d2', 'sha1'), 'base64') AS s \gset
SELECT freescout_webhook('[1,2,3]', :'s', 'convo.status');
SELECT encode(hmac('{"id":"x","status":7}', '94b2eb8ab4323a9ad12989f5aaa7c7d2', 'sha1'), 'base64') AS s \gset
SELECT freescout_webhook('{"id":"x","status":7}', :'s', 'convo.status');

-- Rejected, changing nothing: forged, missing, malformed, too large.
SELECT count(*) AS log_rows_before FROM freescout_sync_log WHERE direction = 'from_freescout' AND NOT success \gset
SELECT freescout_webhook(:'closed_body', 'AAAAAAAAAAAAAAAAAAAAAAAAAAA=', 'convo.status');
SELECT freescout_webhook(:'closed_body', NULL, 'convo.status');
SELECT freescout_webhook(:'closed_body', encode(hmac(:'closed_body', 'wrong-secret', 'sha1'), 'base64'), 'convo.status');
SELECT encode(hmac('{"id": 1, "status": ', '94b2eb8ab4323a9ad12989f5aaa7c7d2', 'sha1'), 'base64') AS s \gset
SELECT freescout_webhook('{"id": 1, "status": ', :'s', 'convo.status');
-- raw bytes that are not UTF-8 are refused before any parsing
SELECT encode(hmac('\xff7b7d'::bytea, '94b2eb8ab4323a9ad12989f5aaa7c7d2', 'sha1'), 'base64') AS s \gset
SELECT freescout_webhook('\xff7b7d'::bytea, :'s', 'convo.status');
-- and valid bytes work like text
SELECT encode(hmac(convert_to(:'closed_body', 'UTF8'), '94b2eb8ab4323a9ad12989f5aaa7c7d2', 'sha1'), 'base64') AS s \gset
SELECT freescout_webhook(convert_to(:'closed_body', 'UTF8'), :'s', 'convo.status') ->> 'stale' AS stale_via_bytes;
SET freescout.webhook_max_bytes = 1024;
SELECT freescout_webhook(repeat(' ', 2000) || '{}', 'x', 'convo.status');
SELECT status FROM alerts WHERE alert_id = 202;
-- the rejected attempts are on record although their transactions rolled back
SELECT wait_for(format($$(SELECT count(*) FROM freescout_sync_log WHERE direction = 'from_freescout'
                          AND NOT success) >= %s + 6$$, :log_rows_before)) AS rejections_logged;
SELECT event_type, error_message FROM freescout_sync_log
 WHERE direction = 'from_freescout' AND NOT success ORDER BY log_id DESC LIMIT 6;
