-- bench/p2_insert.sql: one SIEM alert per transaction, the shape of a live
-- SIEM feed.  About 10% qualify for a ticket (severity >= 3, the default
-- freescout.auto_create_severity_min); the rest are severity 1 or 2.
\set r random(1, 100)
\set host random(1, 500)
INSERT INTO alerts (title, description, severity, status, computer, username, source_ip,
                    first_seen_at, last_seen_at, event_count, mitre_attack_tactic,
                    mitre_attack_technique, rule_id)
VALUES ('pgbench alert ' || :r, 'single-row insert from bench/p2_insert.sql',
        CASE WHEN :r <= 10 THEN 3 + :r % 2 ELSE 1 + :r % 2 END, 'new',
        'host-' || :host, 'user' || :r, '10.0.0.1', now(), now(), :r, 'TA0001', 'T1078', :host);
