-- Tables, keys and durability.
SELECT relname, relpersistence
  FROM pg_class
 WHERE relname IN ('freescout_tickets', 'freescout_sync_log', 'freescout_outbox',
                   'freescout_worklog', 'freescout_status_map', 'freescout_sync_state')
 ORDER BY relname;

-- The link columns on the SIEM tables, with their indexes.
SELECT attrelid::regclass, attname, atttypid::regtype
  FROM pg_attribute WHERE attname = 'freescout_ticket_id' AND attrelid IN ('alerts'::regclass, 'incidents'::regclass)
 ORDER BY 1;
SELECT indexrelid::regclass FROM pg_index
 WHERE indrelid IN ('alerts'::regclass, 'incidents'::regclass)
   AND indexrelid::regclass::text LIKE '%freescout%' ORDER BY 1;

-- One alert or incident can never own two tickets, nor a conversation two targets.
INSERT INTO alerts (alert_id, title, severity) VALUES (900, 'schema check', 1);
\set VERBOSITY terse
INSERT INTO freescout_tickets (freescout_id, alert_id) VALUES (90001, 900);
INSERT INTO freescout_tickets (freescout_id, alert_id) VALUES (90002, 900);
INSERT INTO freescout_tickets (freescout_id, alert_id) VALUES (90001, NULL);
INSERT INTO freescout_tickets (freescout_id, alert_id, incident_id) VALUES (90003, NULL, NULL);
\set VERBOSITY default
DELETE FROM alerts WHERE alert_id = 900;
SELECT count(*) FROM freescout_tickets WHERE freescout_id >= 90000;

-- The triggers: on insert, a row trigger filtered by WHEN and one statement flush.
SELECT tgrelid::regclass, tgname, tgtype & 1 = 1 AS for_each_row, tgqual IS NOT NULL AS has_when
  FROM pg_trigger WHERE tgname LIKE 'freescout%' ORDER BY 1, 2;

-- Default status mapping (SIEM -> FreeScout).
SELECT siem_status, freescout_status FROM freescout_status_map ORDER BY 2, 1;
