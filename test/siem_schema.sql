-- test/siem_schema.sql: the SIEM tables as the integration spec describes
-- them, with every field the bridge renders.  Used by the tests, the
-- benchmarks and the demo.  Indexes are the ones a SIEM of this shape has.

CREATE TABLE incidents (
    incident_id  serial PRIMARY KEY,
    title        text NOT NULL,
    description  text,
    severity     integer NOT NULL CHECK (severity BETWEEN 1 AND 4),
    status       text NOT NULL DEFAULT 'new',
    resolution   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz
);

CREATE TABLE alerts (
    alert_id               serial PRIMARY KEY,
    title                  text NOT NULL,
    description            text,
    severity               integer NOT NULL CHECK (severity BETWEEN 1 AND 4),
    status                 text NOT NULL DEFAULT 'new',
    resolution             text,
    computer               text,
    username               text,
    source_ip              inet,
    first_seen_at          timestamptz,
    last_seen_at           timestamptz,
    event_count            integer,
    mitre_attack_tactic    text,
    mitre_attack_technique text,
    rule_id                integer,
    incident_id            integer REFERENCES incidents (incident_id),
    created_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alerts_incident_idx ON alerts (incident_id);
CREATE INDEX alerts_status_idx ON alerts (status);
CREATE INDEX alerts_created_idx ON alerts (created_at);
