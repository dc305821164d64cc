/* freescout_bridge--1.0.sql */

\echo Use "CREATE EXTENSION freescout_bridge" to load this file. \quit

/*
 * The SIEM contract.  The extension lives in the schema that holds the SIEM's
 * alerts and incidents tables.  Fail early, naming everything that is
 * missing, rather than half-install.
 */
DO $contract$
DECLARE
    missing text[] := '{}';
    wrong_type text[] := '{}';
    req record;
    rel regclass;
    typ regtype;
BEGIN
    FOR req IN
        SELECT * FROM (VALUES ('alerts', 'alert_id', true), ('alerts', 'title', false),
                              ('alerts', 'severity', true), ('alerts', 'status', false),
                              ('incidents', 'incident_id', true), ('incidents', 'title', false),
                              ('incidents', 'severity', true), ('incidents', 'status', false)
                      ) AS r(tbl, col, integral)
    LOOP
        rel := pg_catalog.to_regclass(pg_catalog.format('%I.%I', '@extschema@', req.tbl));
        IF rel IS NULL THEN
            IF NOT pg_catalog.format('table %s', req.tbl) = ANY (missing) THEN
                missing := missing || pg_catalog.format('table %s', req.tbl);
            END IF;
            CONTINUE;
        END IF;
        SELECT a.atttypid::regtype INTO typ
          FROM pg_catalog.pg_attribute a
         WHERE a.attrelid = rel AND a.attname = req.col AND a.attnum > 0 AND NOT a.attisdropped;
        IF typ IS NULL THEN
            missing := missing || pg_catalog.format('column %s.%s', req.tbl, req.col);
        ELSIF req.integral AND typ NOT IN ('smallint'::regtype, 'integer'::regtype, 'bigint'::regtype) THEN
            wrong_type := wrong_type || pg_catalog.format('%s.%s is %s', req.tbl, req.col, typ);
        END IF;
    END LOOP;

    IF pg_catalog.cardinality(missing) > 0 THEN
        RAISE EXCEPTION 'freescout_bridge cannot find the SIEM tables it works with'
            USING ERRCODE = 'undefined_table',
                  DETAIL = pg_catalog.format('Missing in schema "%s": %s.', '@extschema@',
                                             pg_catalog.array_to_string(missing, ', ')),
                  HINT = 'Create the extension in the schema that holds alerts(alert_id, title, severity, status) and incidents(incident_id, title, severity, status), e.g. CREATE EXTENSION freescout_bridge SCHEMA siem.';
    END IF;
    IF pg_catalog.cardinality(wrong_type) > 0 THEN
        RAISE EXCEPTION 'freescout_bridge needs integer ids and severities in the SIEM tables'
            USING ERRCODE = 'datatype_mismatch',
                  DETAIL = pg_catalog.array_to_string(wrong_type, '; ') || '.',
                  HINT = 'alert_id, incident_id and severity must be smallint, integer or bigint.';
    END IF;
END
$contract$;

-- Tickets: one FreeScout conversation per alert or incident.
CREATE TABLE @extschema@.freescout_tickets (
    ticket_id        serial PRIMARY KEY,
    freescout_id     integer NOT NULL,
    freescout_number integer,
    alert_id         bigint REFERENCES @extschema@.alerts (alert_id) ON DELETE CASCADE,
    incident_id      bigint REFERENCES @extschema@.incidents (incident_id) ON DELETE CASCADE,
    ticket_url       text,
    status           varchar(20) CHECK (status IN ('active', 'pending', 'closed', 'spam')),
    assignee_id      integer,
    assignee_name    varchar(200),
    created_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at       timestamptz,
    synced_at        timestamptz,
    -- The FreeScout state last applied: updatedAt has whole seconds only, so
    -- the newest thread id (status changes add lineitem threads) orders
    -- two changes made within one second.
    freescout_updated_at timestamptz,
    freescout_last_thread_id bigint,
    CONSTRAINT ticket_alert_or_incident CHECK (
        (alert_id IS NOT NULL AND incident_id IS NULL) OR
        (alert_id IS NULL AND incident_id IS NOT NULL))
);
-- Uniqueness is what makes "one ticket per alert" a fact, not a hope.
CREATE UNIQUE INDEX idx_freescout_tickets_alert ON @extschema@.freescout_tickets (alert_id);
CREATE UNIQUE INDEX idx_freescout_tickets_incident ON @extschema@.freescout_tickets (incident_id);
CREATE UNIQUE INDEX idx_freescout_tickets_freescout_id ON @extschema@.freescout_tickets (freescout_id);

CREATE TABLE @extschema@.freescout_sync_log (
    log_id        bigserial PRIMARY KEY,
    ticket_id     integer REFERENCES @extschema@.freescout_tickets (ticket_id) ON DELETE SET NULL,
    direction     varchar(20) NOT NULL CHECK (direction IN ('to_freescout', 'from_freescout')),
    event_type    varchar(50) NOT NULL,
    payload       jsonb,
    success       boolean NOT NULL,
    error_message text,
    http_status   integer,
    latency_ms    double precision,
    alert_id      bigint,
    incident_id   bigint,
    outbox_id     bigint,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE INDEX idx_freescout_sync_log_ticket ON @extschema@.freescout_sync_log (ticket_id);
CREATE INDEX idx_freescout_sync_log_created ON @extschema@.freescout_sync_log (created_at);

/*
 * The outbox.  Logged, written in the same transaction as the SIEM change
 * that caused it, so a committed alert always has its job.  Finished jobs
 * are deleted; dead ones stay with their reason until retried.
 */
CREATE TABLE @extschema@.freescout_outbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('create', 'tags', 'fields', 'status', 'note', 'link')),
    alert_id         bigint,
    incident_id      bigint,
    payload          jsonb,
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'inflight', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,
    needs_lookup     boolean NOT NULL DEFAULT false,
    due_at           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    first_claimed_at timestamptz,
    last_error       text,
    CONSTRAINT outbox_alert_or_incident CHECK ((alert_id IS NULL) <> (incident_id IS NULL))
);
CREATE INDEX freescout_outbox_due ON @extschema@.freescout_outbox (due_at, id) WHERE state = 'pending';

-- Work log: notes and replies of both sides, one row per FreeScout thread.
CREATE TABLE @extschema@.freescout_worklog (
    worklog_id          bigserial PRIMARY KEY,
    alert_id            bigint REFERENCES @extschema@.alerts (alert_id) ON DELETE CASCADE,
    incident_id         bigint REFERENCES @extschema@.incidents (incident_id) ON DELETE CASCADE,
    ticket_id           integer REFERENCES @extschema@.freescout_tickets (ticket_id) ON DELETE SET NULL,
    direction           varchar(20) NOT NULL CHECK (direction IN ('to_freescout', 'from_freescout')),
    freescout_thread_id bigint UNIQUE,
    thread_type         varchar(20) NOT NULL,
    author              text,
    body                text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT worklog_alert_or_incident CHECK ((alert_id IS NULL) <> (incident_id IS NULL))
);
CREATE INDEX idx_freescout_worklog_alert ON @extschema@.freescout_worklog (alert_id);
CREATE INDEX idx_freescout_worklog_incident ON @extschema@.freescout_worklog (incident_id);

-- SIEM status -> FreeScout status, editable.  Unmapped statuses are logged.
CREATE TABLE @extschema@.freescout_status_map (
    siem_status      text PRIMARY KEY,
    freescout_status text NOT NULL CHECK (freescout_status IN ('active', 'pending', 'closed', 'spam')),
    builtin          boolean NOT NULL DEFAULT false
);
INSERT INTO @extschema@.freescout_status_map (siem_status, freescout_status, builtin) VALUES
    ('new', 'active', true), ('open', 'active', true), ('acknowledged', 'active', true),
    ('in_progress', 'active', true), ('investigating', 'active', true),
    ('pending', 'pending', true), ('on_hold', 'pending', true),
    ('resolved', 'closed', true), ('closed', 'closed', true), ('false_positive', 'closed', true);

-- Reconciliation bookkeeping (one row).
CREATE TABLE @extschema@.freescout_sync_state (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_synced_at timestamptz,
    last_result    jsonb
);
INSERT INTO @extschema@.freescout_sync_state DEFAULT VALUES;

-- The SIEM side of the link.  The columns outlive DROP EXTENSION (SIEM data).
-- Partial indexes: most alerts never get a ticket, and nothing looks up NULL,
-- so the SIEM's inserts pay no index entry for them.
ALTER TABLE @extschema@.alerts ADD COLUMN IF NOT EXISTS freescout_ticket_id integer;
ALTER TABLE @extschema@.incidents ADD COLUMN IF NOT EXISTS freescout_ticket_id integer;
CREATE INDEX IF NOT EXISTS idx_alerts_freescout_ticket ON @extschema@.alerts (freescout_ticket_id)
    WHERE freescout_ticket_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_incidents_freescout_ticket ON @extschema@.incidents (freescout_ticket_id)
    WHERE freescout_ticket_id IS NOT NULL;

-- pg_dump keeps the bridge's state; builtin status rows come from this script.
SELECT pg_catalog.pg_extension_config_dump('@extschema@.freescout_tickets', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.freescout_tickets_ticket_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.freescout_outbox', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.freescout_worklog', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.freescout_worklog_worklog_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.freescout_status_map', 'WHERE NOT builtin');

------------------------------------------------------------------------------
-- C entry points
------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.freescout_wake_at_commit() RETURNS void
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'freescout_wake_at_commit';

CREATE FUNCTION @extschema@.freescout_applying_remote() RETURNS boolean
    LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'freescout_applying_remote';

CREATE FUNCTION @extschema@.freescout_create_ticket(alert_id bigint)
    RETURNS @extschema@.freescout_tickets
    LANGUAGE c STRICT VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'freescout_create_ticket';
COMMENT ON FUNCTION @extschema@.freescout_create_ticket(bigint) IS
    'Creates (or returns) the FreeScout conversation of an alert, synchronously.';

CREATE FUNCTION @extschema@.freescout_create_incident_ticket(incident_id bigint)
    RETURNS @extschema@.freescout_tickets
    LANGUAGE c STRICT VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'freescout_create_incident_ticket';
COMMENT ON FUNCTION @extschema@.freescout_create_incident_ticket(bigint) IS
    'Creates (or returns) the FreeScout conversation of an incident, synchronously.';

CREATE FUNCTION @extschema@.freescout_webhook(body text, signature text, event text DEFAULT NULL)
    RETURNS jsonb
    LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'freescout_webhook';
COMMENT ON FUNCTION @extschema@.freescout_webhook(text, text, text) IS
    'Verifies and applies one FreeScout webhook (raw body, X-FreeScout-Signature, X-FreeScout-Event).';

CREATE FUNCTION @extschema@.freescout_webhook(body bytea, signature text, event text DEFAULT NULL)
    RETURNS jsonb
    LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'freescout_webhook_bytes';
COMMENT ON FUNCTION @extschema@.freescout_webhook(bytea, text, text) IS
    'freescout_webhook() for the raw body bytes as received (checked for UTF-8 here).';

CREATE FUNCTION @extschema@.freescout_sync() RETURNS jsonb
    LANGUAGE c VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'freescout_sync';
COMMENT ON FUNCTION @extschema@.freescout_sync() IS
    'Reconciles with FreeScout now (the worker also does this every freescout.sync_interval).';

CREATE FUNCTION @extschema@.freescout_metrics(OUT metric text, OUT value bigint)
    RETURNS SETOF record
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'freescout_metrics';

------------------------------------------------------------------------------
-- SQL entry points
------------------------------------------------------------------------------

/*
 * A note written in the SIEM: kept in the work log and queued for FreeScout
 * as a note thread.  One body serves alerts and incidents.
 */
CREATE FUNCTION @extschema@.freescout_queue_note(target_alert bigint, target_incident bigint,
                                                 note text, author text)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id bigint;
    v_ticket integer;
BEGIN
    IF note IS NULL OR pg_catalog.btrim(note) = '' THEN
        RAISE EXCEPTION 'a note needs text' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Pass the note as non-empty text.';
    END IF;
    IF target_alert IS NOT NULL THEN
        SELECT COALESCE(a.freescout_ticket_id, 0) INTO v_ticket
          FROM @extschema@.alerts a WHERE a.alert_id = target_alert;
    ELSE
        SELECT COALESCE(i.freescout_ticket_id, 0) INTO v_ticket
          FROM @extschema@.incidents i WHERE i.incident_id = target_incident;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION '% % does not exist', CASE WHEN target_alert IS NULL THEN 'incident' ELSE 'alert' END,
                        COALESCE(target_alert, target_incident)
            USING ERRCODE = 'no_data_found', HINT = 'Pass the id of an existing alert or incident.';
    END IF;
    INSERT INTO @extschema@.freescout_worklog (alert_id, incident_id, ticket_id, direction, thread_type, author, body)
    VALUES (target_alert, target_incident, NULLIF(v_ticket, 0), 'to_freescout', 'note', author, note)
    RETURNING worklog_id INTO v_id;
    INSERT INTO @extschema@.freescout_outbox (kind, alert_id, incident_id, payload)
    VALUES ('note', target_alert, target_incident, pg_catalog.jsonb_build_object('worklog_id', v_id));
    PERFORM @extschema@.freescout_wake_at_commit();
    RETURN v_id;
END
$$;

CREATE FUNCTION @extschema@.freescout_add_note(alert_id bigint, note text, author text DEFAULT NULL)
    RETURNS bigint
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    RETURN @extschema@.freescout_queue_note(alert_id, NULL, note, author);

CREATE FUNCTION @extschema@.freescout_add_incident_note(incident_id bigint, note text, author text DEFAULT NULL)
    RETURNS bigint
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    RETURN @extschema@.freescout_queue_note(NULL, incident_id, note, author);

-- Dead-lettered jobs back into the queue, e.g. after fixing the API key.
CREATE FUNCTION @extschema@.freescout_retry_dead() RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
BEGIN
    UPDATE @extschema@.freescout_outbox
       SET state = 'pending', attempts = 0, due_at = pg_catalog.now(), last_error = NULL
     WHERE state = 'dead';
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM @extschema@.freescout_wake_at_commit();
    END IF;
    RETURN n;
END
$$;

-- What is waiting, in flight and dead, for a dashboard.
CREATE VIEW @extschema@.freescout_queue AS
    SELECT kind, state, pg_catalog.count(*) AS jobs,
           pg_catalog.min(created_at) AS oldest, pg_catalog.max(attempts) AS max_attempts
      FROM @extschema@.freescout_outbox
     GROUP BY kind, state;

------------------------------------------------------------------------------
-- Triggers: the SIEM's changes become outbox rows in the same transaction.
------------------------------------------------------------------------------

/*
 * Settings are read with missing_ok so the triggers still work in a session
 * that has not loaded the library.
 */
CREATE FUNCTION @extschema@.freescout_setting_bool(name text, fallback boolean) RETURNS boolean
    LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT COALESCE(NULLIF(pg_catalog.current_setting(name, true), '')::boolean, fallback)
$$;

-- The insert path (src/enqueue.c): a WHEN filter, a row trigger that
-- remembers qualifying alerts, a statement trigger that queues them at once.
CREATE FUNCTION @extschema@.freescout_alert_qualifies(severity integer, incident_id bigint)
    RETURNS boolean
    LANGUAGE c STABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'freescout_alert_qualifies';
CREATE FUNCTION @extschema@.freescout_collect_alert() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'freescout_collect_alert';
-- Not SECURITY DEFINER: it becomes the owner itself, only when it writes.
CREATE FUNCTION @extschema@.freescout_flush_alerts() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'freescout_flush_alerts';

/*
 * The alert triggers are generated to match the SIEM: the incident rules
 * exist only when alerts has incident_id.
 */
DO $triggers$
DECLARE
    has_incident_link boolean := EXISTS (
        SELECT 1 FROM pg_catalog.pg_attribute
         WHERE attrelid = '@extschema@.alerts'::regclass AND attname = 'incident_id'
           AND attnum > 0 AND NOT attisdropped);
    link_rule text;
BEGIN
    EXECUTE pg_catalog.format($t$
CREATE TRIGGER freescout_alert_collect
    AFTER INSERT ON @extschema@.alerts
    FOR EACH ROW
    WHEN (@extschema@.freescout_alert_qualifies(NEW.severity::integer, %s))
    EXECUTE FUNCTION @extschema@.freescout_collect_alert();
$t$, CASE WHEN has_incident_link THEN 'NEW.incident_id::bigint' ELSE 'NULL' END);

    -- An alert that joins an incident later joins the incident's ticket when
    -- the incident has one or is going to get one.
    link_rule := CASE WHEN has_incident_link THEN $rule$
        n.incident_id IS NOT NULL AND (on_incident OR EXISTS (
            SELECT 1 FROM @extschema@.incidents i
             WHERE i.incident_id = n.incident_id AND i.freescout_ticket_id IS NOT NULL))
        $rule$ ELSE 'false' END;

    EXECUTE pg_catalog.format($fn$
CREATE FUNCTION @extschema@.freescout_alert_changed() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
DECLARE
    on_incident boolean := @extschema@.freescout_setting_bool('freescout.auto_create_on_incident', true);
    n record := NEW;
BEGIN
    IF NOT @extschema@.freescout_setting_bool('freescout.enabled', true) THEN
        RETURN NULL;
    END IF;
    -- a change applied from FreeScout must not be sent back to it
    IF OLD.status IS DISTINCT FROM NEW.status AND NOT @extschema@.freescout_applying_remote()
       AND EXISTS (SELECT 1 FROM @extschema@.freescout_tickets t WHERE t.alert_id = NEW.alert_id)
       AND NOT EXISTS (SELECT 1 FROM @extschema@.freescout_outbox o
                        WHERE o.kind = 'status' AND o.alert_id = NEW.alert_id AND o.state = 'pending') THEN
        INSERT INTO @extschema@.freescout_outbox (kind, alert_id) VALUES ('status', NEW.alert_id);
        PERFORM @extschema@.freescout_wake_at_commit();
    END IF;
    IF %1$s AND %2$s THEN
        INSERT INTO @extschema@.freescout_outbox (kind, alert_id) VALUES ('link', NEW.alert_id);
        PERFORM @extschema@.freescout_wake_at_commit();
    END IF;
    RETURN NULL;
END
$body$;
$fn$, CASE WHEN has_incident_link THEN 'OLD.incident_id IS DISTINCT FROM NEW.incident_id' ELSE 'false' END,
      link_rule);

    EXECUTE pg_catalog.format($t$
CREATE TRIGGER freescout_alert_changed
    AFTER UPDATE OF status%s ON @extschema@.alerts
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status%s)
    EXECUTE FUNCTION @extschema@.freescout_alert_changed();
$t$, CASE WHEN has_incident_link THEN ', incident_id' ELSE '' END,
     CASE WHEN has_incident_link THEN ' OR OLD.incident_id IS DISTINCT FROM NEW.incident_id' ELSE '' END);
END
$triggers$;

CREATE TRIGGER freescout_alerts_inserted
    AFTER INSERT ON @extschema@.alerts
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.freescout_flush_alerts();

CREATE FUNCTION @extschema@.freescout_incidents_inserted() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    queued bigint;
BEGIN
    IF NOT @extschema@.freescout_setting_bool('freescout.enabled', true)
       OR NOT @extschema@.freescout_setting_bool('freescout.auto_create_on_incident', true) THEN
        RETURN NULL;
    END IF;
    INSERT INTO @extschema@.freescout_outbox (kind, incident_id)
    SELECT 'create', n.incident_id FROM new_incidents n;
    GET DIAGNOSTICS queued = ROW_COUNT;
    IF queued > 0 THEN
        PERFORM @extschema@.freescout_wake_at_commit();
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER freescout_incidents_inserted
    AFTER INSERT ON @extschema@.incidents
    REFERENCING NEW TABLE AS new_incidents
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.freescout_incidents_inserted();

CREATE FUNCTION @extschema@.freescout_incident_changed() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF @extschema@.freescout_setting_bool('freescout.enabled', true)
       AND NOT @extschema@.freescout_applying_remote()
       AND EXISTS (SELECT 1 FROM @extschema@.freescout_tickets t WHERE t.incident_id = NEW.incident_id)
       AND NOT EXISTS (SELECT 1 FROM @extschema@.freescout_outbox o
                        WHERE o.kind = 'status' AND o.incident_id = NEW.incident_id AND o.state = 'pending') THEN
        INSERT INTO @extschema@.freescout_outbox (kind, incident_id) VALUES ('status', NEW.incident_id);
        PERFORM @extschema@.freescout_wake_at_commit();
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER freescout_incident_changed
    AFTER UPDATE OF status ON @extschema@.incidents
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION @extschema@.freescout_incident_changed();

------------------------------------------------------------------------------
-- Privileges: nothing for PUBLIC.  Grant the SIEM backend's role what it
-- calls, e.g. GRANT EXECUTE ON FUNCTION freescout_create_ticket(bigint) TO siem_api.
------------------------------------------------------------------------------

REVOKE ALL ON TABLE @extschema@.freescout_tickets, @extschema@.freescout_sync_log,
    @extschema@.freescout_outbox, @extschema@.freescout_worklog, @extschema@.freescout_status_map,
    @extschema@.freescout_sync_state, @extschema@.freescout_queue FROM PUBLIC;
REVOKE ALL ON FUNCTION
    @extschema@.freescout_wake_at_commit(), @extschema@.freescout_applying_remote(),
    @extschema@.freescout_create_ticket(bigint), @extschema@.freescout_create_incident_ticket(bigint),
    @extschema@.freescout_webhook(text, text, text), @extschema@.freescout_webhook(bytea, text, text),
    @extschema@.freescout_sync(),
    @extschema@.freescout_metrics(), @extschema@.freescout_add_note(bigint, text, text),
    @extschema@.freescout_queue_note(bigint, bigint, text, text),
    @extschema@.freescout_add_incident_note(bigint, text, text), @extschema@.freescout_retry_dead(),
    @extschema@.freescout_setting_bool(text, boolean),
    @extschema@.freescout_alert_qualifies(integer, bigint), @extschema@.freescout_collect_alert(),
    @extschema@.freescout_flush_alerts(), @extschema@.freescout_alert_changed(),
    @extschema@.freescout_incidents_inserted(), @extschema@.freescout_incident_changed()
    FROM PUBLIC;

/*
 * The triggers sit on the SIEM's tables, which are not ours, so PostgreSQL
 * does not count them as part of the extension and a plain DROP EXTENSION
 * would refuse to drop their functions.  An automatic dependency on the
 * extension lets DROP EXTENSION remove the triggers (and only them).
 */
INSERT INTO pg_catalog.pg_depend (classid, objid, objsubid, refclassid, refobjid, refobjsubid, deptype)
SELECT 'pg_catalog.pg_trigger'::pg_catalog.regclass, t.oid, 0,
       'pg_catalog.pg_extension'::pg_catalog.regclass, e.oid, 0, 'a'
  FROM pg_catalog.pg_trigger t, pg_catalog.pg_extension e
 WHERE e.extname = 'freescout_bridge'
   AND t.tgrelid IN ('@extschema@.alerts'::pg_catalog.regclass, '@extschema@.incidents'::pg_catalog.regclass)
   AND t.tgname IN ('freescout_alert_collect', 'freescout_alerts_inserted', 'freescout_alert_changed',
                    'freescout_incidents_inserted', 'freescout_incident_changed');

-- The one grant to PUBLIC, deliberate: a trigger's WHEN clause runs with the
-- privileges of whoever inserts the alert, so the SIEM's ingest role must be
-- able to call the filter.  It only reads settings and returns a boolean.
GRANT EXECUTE ON FUNCTION @extschema@.freescout_alert_qualifies(integer, bigint) TO PUBLIC;
