-- CREATE EXTENSION checks the SIEM contract and names what is missing.
-- (One extension per database, so each case gets a database of its own.)
CREATE DATABASE contract_check;
\c contract_check
CREATE EXTENSION freescout_bridge;

CREATE TABLE alerts (alert_id int PRIMARY KEY, title text, status text);
CREATE EXTENSION freescout_bridge;

DROP TABLE alerts;
CREATE TABLE alerts (alert_id uuid PRIMARY KEY, title text, severity text, status text);
CREATE TABLE incidents (incident_id int PRIMARY KEY, title text, severity int, status text);
CREATE EXTENSION freescout_bridge;
DROP TABLE alerts, incidents;

-- A SIEM without the optional columns (no incident link) still works.
CREATE SCHEMA siem;
CREATE TABLE siem.alerts (alert_id bigint PRIMARY KEY, title text, severity smallint, status text);
CREATE TABLE siem.incidents (incident_id bigint PRIMARY KEY, title text, severity smallint, status text);
CREATE EXTENSION freescout_bridge SCHEMA siem;
SELECT pg_get_triggerdef(oid) ~ 'incident_id' AS has_incident_rule FROM pg_trigger WHERE tgname = 'freescout_alert_collect';
INSERT INTO siem.alerts VALUES (1, 'queued', 4, 'new');
SELECT kind, alert_id FROM siem.freescout_outbox;
-- A plain DROP EXTENSION works: it takes its triggers along, and leaves the
-- SIEM's tables and their link column (SIEM data) in place.
DROP EXTENSION freescout_bridge;
SELECT count(*) AS triggers_left FROM pg_trigger WHERE NOT tgisinternal;
SELECT attname FROM pg_attribute WHERE attrelid = 'siem.alerts'::regclass AND attnum > 0 ORDER BY attnum;
SELECT count(*) AS alerts_kept FROM siem.alerts;
\c contrib_regression
DROP DATABASE contract_check;
