-- The SIEM's tables, the extension, and a helper that waits for the worker.
SET client_min_messages = warning;
\i test/siem_schema.sql
CREATE EXTENSION freescout_bridge;
-- only the tests sign webhooks themselves
CREATE EXTENSION pgcrypto;

-- Polls a condition with a fresh snapshot each time, up to `seconds`.
CREATE FUNCTION wait_for(condition text, seconds float8 DEFAULT 15) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    ok boolean;
    deadline timestamptz := clock_timestamp() + make_interval(secs => seconds);
BEGIN
    LOOP
        PERFORM pg_stat_clear_snapshot();  -- pg_stat_activity is cached per transaction
        EXECUTE 'SELECT (' || condition || ')' INTO ok;
        IF ok THEN
            RETURN true;
        END IF;
        IF clock_timestamp() > deadline THEN
            RETURN false;
        END IF;
        PERFORM pg_sleep(0.02);
    END LOOP;
END
$$;

\! /usr/bin/python3 test/simctl.py reset

-- The worker was started at server start, before this database existed;
-- it retries until it can connect.
SELECT wait_for($$EXISTS (SELECT 1 FROM pg_stat_activity
                          WHERE backend_type = 'freescout_bridge worker'
                            AND datname = current_database())$$, 30) AS worker_running;
SELECT application_name, backend_type FROM pg_stat_activity
 WHERE backend_type = 'freescout_bridge worker';
