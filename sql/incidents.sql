-- Scenario 3: an incident gets one ticket; its alerts join it.
\! /usr/bin/python3 test/simctl.py mark
-- (the SIEM correlates in one transaction: the incident and its alerts)
BEGIN;
INSERT INTO incidents (incident_id, title, severity, description, created_at)
VALUES (300, 'Lateral movement <from WS-01>', 4, 'Correlated from three alerts', '2026-12-04 09:00:00+00');
INSERT INTO alerts (alert_id, title, severity, incident_id)
VALUES (301, 'RDP from WS-01', 4, 300), (302, 'SMB exec on SRV-2', 3, 300), (303, 'odd logon', 1, 300);
COMMIT;
SELECT wait_for($$NOT EXISTS (SELECT 1 FROM freescout_outbox WHERE incident_id = 300 OR alert_id BETWEEN 301 AND 303)$$);
SELECT i.incident_id, t.ticket_id IS NOT NULL AS has_ticket, i.freescout_ticket_id = t.ticket_id AS linked
  FROM incidents i JOIN freescout_tickets t USING (incident_id) WHERE i.incident_id = 300;
-- the alerts share the incident's ticket and have none of their own
SELECT a.alert_id, a.freescout_ticket_id = i.freescout_ticket_id AS on_incident_ticket,
       EXISTS (SELECT 1 FROM freescout_tickets t WHERE t.alert_id = a.alert_id) AS own_ticket
  FROM alerts a JOIN incidents i USING (incident_id) WHERE i.incident_id = 300 ORDER BY 1;
\! /usr/bin/python3 test/simctl.py count
\! /usr/bin/python3 test/simctl.py show incident:300

-- An alert that joins later is linked, and the incident's ticket gets a note.
INSERT INTO alerts (alert_id, title, severity) VALUES (304, 'Late <joiner>', 2);
UPDATE alerts SET incident_id = 300 WHERE alert_id = 304;
SELECT wait_for($$NOT EXISTS (SELECT 1 FROM freescout_outbox WHERE alert_id = 304)$$);
SELECT a.freescout_ticket_id = i.freescout_ticket_id AS linked
  FROM alerts a JOIN incidents i USING (incident_id) WHERE a.alert_id = 304;
\! /usr/bin/python3 test/simctl.py requests
\! /usr/bin/python3 test/simctl.py show incident:300 | tail -3
