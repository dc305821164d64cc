#!/usr/bin/env python3
"""Fault-injection suite for freescout_bridge: crashes, outages, throttling, failover.

Everything is real: a temporary PostgreSQL cluster with the worker preloaded (harness.Cluster),
the FreeScout simulator as its own process (harness.Simulator), kill -9 on real processes, a real
streaming standby made with pg_basebackup.  Run it as the postgres user (PostgreSQL refuses root):

    su postgres -c '/usr/bin/python3 test/fault_suite.py'            # bounded CI form, < 4 minutes
    su postgres -c '/usr/bin/python3 test/fault_suite.py --long'     # full form (>= 20 crash rounds,
                                                                     #  60 s outage, ...)
    ... --only R1,R3   runs some cases;  --seed N  repeats a random schedule;  --keep  keeps /tmp dirs

Cases (see each function's docstring):
  R1  kill -9 of the worker or of the whole postmaster at random moments during a burst of alerts,
      sometimes while the simulator loses the answers of committed creates (drop_after_commit)
  R2  FreeScout down mid-burst: refused connections, then 503s, then hangs (timeouts); the number
      of requests during the outage stays small (circuit breaker); then a 1 s blip mid-burst must
      not stall sending for long
  R3  a 429 with Retry-After: 2 on create: the retry waits >= 2 s
  R4  500 / connection reset / lost answer on create (with a warm keep-alive connection around, so
      a silent libcurl re-send of the POST would show): no duplicate, the lookup adopts
  R5  a 4xx (unknown mailbox) dead-letters the job with its reason; freescout_retry_dead() after
      the fix delivers it
  R7  streaming standby (pg_basebackup -R), primary stopped -m immediate mid-burst, standby promoted:
      its worker finishes the job, exactly once
  (R8, valgrind, is a separate suite.)

After a kill -9 of the postmaster, pg_ctl may say "another server might be running; trying to
start server anyway": that is the stale postmaster.pid, expected.

Every check prints "ok - faults: ..." or "FAILED - faults: ..."; the last line is
"faults: N passed, M failed" and the exit code is non-zero when anything failed.
"""

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness  # noqa: E402
import psycopg  # noqa: E402

CREATE_PATH = r"^POST /api/conversations$"   # the create call only, not .../threads
MIN_SEVERITY = 3                              # freescout.auto_create_severity_min (default)

results = harness.Results("faults")
KEEP = False


def log(message):
    print(f"# {message}", flush=True)


# --------------------------------------------------------------------------------------------
# Rig: one simulator and one cluster per case, in a scratch directory under /tmp
# --------------------------------------------------------------------------------------------

class Rig:
    """A simulator and a cluster whose worker sends to it; torn down on exit."""

    def __init__(self, name, settings=None, sim_latency_ms=0):
        self.name = name
        self.workdir = tempfile.mkdtemp(prefix=f"fsb-faults-{name}-", dir="/tmp")
        self.sim = None
        self.clusters = []
        self.settings = settings or {}
        self.sim_latency_ms = sim_latency_ms
        self.failed_before = results.failed

    def __enter__(self):
        try:
            self.sim = harness.Simulator(self.workdir, latency_ms=self.sim_latency_ms)
            settings = {"freescout.url": f"'{self.sim.url}'"}
            settings.update(self.settings)
            self.cluster = self.add_cluster(harness.Cluster(self.workdir, name="pg", settings=settings))
            self.cluster.initdb().start().create_siem()
            self.cluster.wait_for_worker()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def add_cluster(self, cluster):
        self.clusters.append(cluster)
        return cluster

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None or results.failed > self.failed_before:
            for cluster in self.clusters:
                tail_log(cluster.logfile)
        for cluster in self.clusters:
            try:
                cluster.stop("immediate")
            except Exception as error:  # noqa: BLE001 - best effort teardown
                log(f"stopping {cluster.datadir}: {error}")
        if self.sim:
            self.sim.stop()
        for cluster in self.clusters:
            if not cluster.postmaster_pid():
                shutil.rmtree(cluster.sockdir, ignore_errors=True)
        if KEEP or exc_type is not None or results.failed > self.failed_before:
            log(f"kept {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return False


def tail_log(path, lines=40):
    try:
        with open(path, errors="replace") as f:
            content = f.readlines()[-lines:]
    except OSError:
        return
    log(f"--- last lines of {path}")
    for line in content:
        print("#   " + line.rstrip(), flush=True)


# --------------------------------------------------------------------------------------------
# Helpers that survive crash recovery
# --------------------------------------------------------------------------------------------

def wait_ready(cluster, timeout=90):
    """Waits until the server accepts connections to the SIEM database again."""
    def ready():
        try:
            return cluster.scalar("SELECT 1") == 1
        except psycopg.Error:
            return False
    harness.wait_until(ready, timeout=timeout, interval=0.1, what="server accepting connections")


def wait_worker(cluster, timeout=60, not_pid=None):
    """The worker's pid, once there is one (other than `not_pid`, a worker we killed)."""
    def pid():
        try:
            found = cluster.worker_pid()
        except psycopg.Error:
            return None
        return found if found != not_pid else None
    return harness.wait_until(pid, timeout=timeout, interval=0.1, what="freescout_bridge worker")


def pid_state(pid):
    """'Z' for a zombie, another letter for a live process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def crash_postmaster(cluster):
    """kill -9 of the postmaster and its children, then a normal start (crash recovery)."""
    pid = cluster.postmaster_pid()
    cluster.kill9_postmaster()
    # The killed postmaster was daemonized by pg_ctl, so its parent is PID 1, which in some
    # containers reaps late: until then kill(pid, 0) succeeds and the new postmaster refuses to
    # start ("lock file postmaster.pid already exists").  Every process of the old server is
    # dead by now (kill9_postmaster killed the children too), so an unreaped zombie's lock file
    # may go.
    try:
        harness.wait_until(lambda: pid_state(pid) in (None, "Z"), timeout=10, what="postmaster death")
        harness.wait_until(lambda: pid_state(pid) is None, timeout=3, what="zombie reaped")
    except TimeoutError:
        if pid_state(pid) == "Z":
            os.unlink(os.path.join(cluster.datadir, "postmaster.pid"))
    cluster.start()


def drain(cluster, timeout=120):
    """Waits until no job is pending or in flight (dead ones stay), riding out restarts."""
    def empty():
        try:
            return cluster.scalar("SELECT count(*) = 0 FROM freescout_outbox WHERE state <> 'dead'")
        except psycopg.Error:
            return False
    start = time.monotonic()
    harness.wait_until(empty, timeout=timeout, interval=0.05, what="empty outbox")
    return time.monotonic() - start


def insert_burst(cluster, count, qualifying_share, rng):
    """Inserts `count` alerts in one transaction; a random `qualifying_share` gets severity >= 3.

    Returns (first alert_id, last alert_id, number qualifying)."""
    severities = [rng.choice((3, 4)) if rng.random() < qualifying_share else rng.choice((1, 2))
                  for _ in range(count)]
    with cluster.connect() as conn:
        with conn.transaction():
            rows = conn.execute(
                "INSERT INTO alerts (title, description, severity, computer, username, source_ip, "
                "                    event_count, mitre_attack_tactic, rule_id) "
                "SELECT 'Fault burst ' || g, 'burst alert ' || g, s, 'host-' || (g %% 97), 'user' || (g %% 13), "
                "       ('10.0.' || (g %% 250) || '.' || (g %% 200 + 1))::inet, g %% 50 + 1, 'Execution', g %% 7 "
                "  FROM unnest(%s::int[]) WITH ORDINALITY AS u(s, g) "
                "RETURNING alert_id", (severities,)).fetchall()
    ids = [r[0] for r in rows]
    return min(ids), max(ids), sum(1 for s in severities if s >= MIN_SEVERITY)


def sim_conversations(sim):
    return sim.control("GET", "/_sim/conversations")


def verify_exactly_once(cluster, sim, where="true"):
    """Compares SIEM, bridge and simulator for the alerts matching `where`.

    Returns a dict: qualifying, tickets, lost (qualifying alert without a ticket), sim_missing
    (no conversation for it in FreeScout), duplicated (more than one conversation for one alert),
    spurious (ticket or conversation for a non-qualifying alert), mismatched (ticket that points at
    a conversation not carrying the alert's marker), dead (dead-lettered jobs)."""
    rows = cluster.sql(
        f"SELECT a.alert_id, a.severity >= {MIN_SEVERITY}, t.freescout_id, a.freescout_ticket_id, "
        "       t.ticket_id FROM alerts a LEFT JOIN freescout_tickets t ON t.alert_id = a.alert_id "
        f"WHERE a.alert_id IN (SELECT alert_id FROM alerts WHERE {where})")
    stats = sim.stats()
    markers = stats["markers"]
    conversations = {conv["id"]: conv for conv in sim_conversations(sim)}
    out = dict(qualifying=0, tickets=0, lost=[], sim_missing=[], duplicated=[], spurious=[],
               mismatched=[], unlinked=[])
    for alert_id, qualifies, freescout_id, linked_ticket, ticket_id in rows:
        count = markers.get(f"alert:{alert_id}", 0)
        if qualifies:
            out["qualifying"] += 1
            if freescout_id is None:
                out["lost"].append(alert_id)
            else:
                out["tickets"] += 1
                conv = conversations.get(freescout_id)
                if conv is None or f"SIEM Alert #{alert_id}:" not in conv["subject"]:
                    out["mismatched"].append(alert_id)
                if linked_ticket != ticket_id:
                    out["unlinked"].append(alert_id)
            if count == 0:
                out["sim_missing"].append(alert_id)
            elif count > 1:
                out["duplicated"].append(alert_id)
        elif freescout_id is not None or count > 0:
            out["spurious"].append(alert_id)
    out["sim_duplicates"] = stats["duplicates"]
    out["dead"] = cluster.sql("SELECT id, kind, alert_id, last_error FROM freescout_outbox "
                              "WHERE state = 'dead'")
    return out


def check_exactly_once(label, cluster, sim, where="true"):
    """verify_exactly_once() turned into checks; returns the verification dict."""
    v = verify_exactly_once(cluster, sim, where)
    short = lambda xs: f"{len(xs)} e.g. {xs[:5]}"  # noqa: E731
    results.check(f"{label}: every qualifying alert has a ticket (0 lost of {v['qualifying']})",
                  not v["lost"], short(v["lost"]))
    results.check(f"{label}: every qualifying alert has exactly one FreeScout conversation",
                  not v["sim_missing"] and not v["duplicated"] and not v["sim_duplicates"],
                  f"missing {short(v['sim_missing'])}, duplicated {short(v['duplicated'])}, "
                  f"sim duplicates {v['sim_duplicates'][:5]}")
    results.check(f"{label}: tickets point at the right conversation, alerts link their ticket",
                  not v["mismatched"] and not v["unlinked"],
                  f"mismatched {short(v['mismatched'])}, unlinked {short(v['unlinked'])}")
    results.check(f"{label}: nothing for non-qualifying alerts", not v["spurious"], short(v["spurious"]))
    results.check(f"{label}: no dead-lettered job", not v["dead"], str(v["dead"][:3]))
    return v


def sync_log_counts(cluster, where="true"):
    row = cluster.sql(
        "SELECT count(*) FILTER (WHERE event_type = 'lookup'), "
        "       count(*) FILTER (WHERE payload->>'adopted' = 'true'), "
        "       count(*) FILTER (WHERE NOT success AND direction = 'to_freescout') "
        f"FROM freescout_sync_log WHERE {where}")[0]
    return dict(lookups=row[0], adopted=row[1], failed_calls=row[2])


def metric(cluster, name):
    rows = cluster.sql("SELECT value FROM freescout_metrics() WHERE metric = %s", (name,))
    return rows[0][0] if rows else None


def last_request_seq(sim):
    """The seq of the last finished API request (the simulator numbers them 1, 2, ...)."""
    return sim.stats()["requests"]


# --------------------------------------------------------------------------------------------
# R1: kill -9 during a burst
# --------------------------------------------------------------------------------------------

def case_r1(args, rng):
    """kill -9 of the worker (the postmaster then restarts every backend: crash recovery) or of the
    whole postmaster, at a random moment 0-1.5 s after a burst of alerts commits; in some rounds the
    simulator also commits the first few creates but loses their answers (drop_after_commit), so
    conversations exist that the bridge never heard of.  After each round the outbox must drain and
    every qualifying alert must have exactly one ticket and one conversation."""
    if args.long:
        kinds = ["worker"] * 12 + ["postmaster"] * 8
        burst = args.burst or 2000
    else:
        kinds = ["worker"] * 3 + ["postmaster"] * 2
        burst = args.burst or 2000
    plan = []
    for i, kind in enumerate(kinds):
        # drops in about half of the rounds, and at least once for each kind of kill
        drop = rng.random() < 0.5 or i in (1, len(kinds) - 1)
        plan.append((kind, drop))
    rng.shuffle(plan)

    totals = dict(rounds=0, alerts=0, qualifying=0, lost=0, duplicated=0, adopted=0, lookups=0,
                  drops=0, mid_burst=0)
    with Rig("r1") as rig:
        c, sim = rig.cluster, rig.sim
        for number, (kind, drop) in enumerate(plan, 1):
            share = rng.uniform(0.1, 0.5) if number > 1 else 0.5
            delay = rng.uniform(0.0, 1.5)
            drops = rng.randint(2, 5) if drop else 0
            worker = wait_worker(c)
            if drops:
                sim.faults({"mode": "drop_after_commit", "path_regex": CREATE_PATH, "count": drops})
            started = time.monotonic()
            first, last, qualifying = insert_burst(c, burst, share, rng)
            time.sleep(delay)
            in_flight = None
            if kind == "worker":
                os.kill(worker, signal.SIGKILL)
            else:
                crash_postmaster(c)
            markers = sim.stats()["markers"]
            at_kill = sum(1 for i in range(first, last + 1) if f"alert:{i}" in markers)
            # A new worker pid means the postmaster has noticed the death and restarted all
            # backends (a connection made before that would be cut in the middle of the checks).
            wait_worker(c, timeout=90, not_pid=worker)
            wait_ready(c)
            try:
                drain(c, timeout=180)
            except TimeoutError:
                in_flight = c.sql("SELECT state, count(*), max(attempts), max(last_error) "
                                  "FROM freescout_outbox GROUP BY state")
            sim.faults()
            elapsed = time.monotonic() - started
            where = f"alert_id BETWEEN {first} AND {last}"
            v = verify_exactly_once(c, sim, where)
            counts = sync_log_counts(c, where)
            new_worker = wait_worker(c)
            log(f"R1 round {number}: kill -9 {kind} {delay:.2f}s after commit"
                f"{f', {drops} creates answered with a dropped connection' if drops else ''}; "
                f"{qualifying}/{burst} qualifying, {at_kill} in FreeScout at the kill"
                f"{' (mid-burst)' if at_kill < qualifying else ' (burst was through)'}; drained {elapsed:.1f}s after commit; "
                f"lost {len(v['lost'])}, duplicated {len(v['duplicated'])}, lookups {counts['lookups']}, "
                f"adopted {counts['adopted']}; worker {worker} -> {new_worker}")
            results.check(f"R1 round {number} ({kind}): outbox drained", in_flight is None, str(in_flight))
            results.check(f"R1 round {number} ({kind}): the worker was really killed and restarted",
                          new_worker != worker, f"pid {worker} still there")
            results.check(f"R1 round {number} ({kind}): exactly once ({qualifying} qualifying)",
                          not v["lost"] and not v["duplicated"] and not v["sim_missing"]
                          and not v["spurious"] and not v["mismatched"] and not v["unlinked"]
                          and not v["dead"],
                          f"lost {v['lost'][:5]} duplicated {v['duplicated'][:5]} missing "
                          f"{v['sim_missing'][:5]} spurious {v['spurious'][:5]} mismatched "
                          f"{v['mismatched'][:5]} unlinked {v['unlinked'][:5]} dead {v['dead'][:3]}")
            totals["rounds"] += 1
            totals["alerts"] += burst
            totals["qualifying"] += v["qualifying"]
            totals["lost"] += len(v["lost"])
            totals["duplicated"] += len(v["duplicated"])
            totals["adopted"] += counts["adopted"]
            totals["lookups"] += counts["lookups"]
            totals["drops"] += drops
            totals["mid_burst"] += at_kill < qualifying
        # the whole run, once more, from scratch: the simulator's global duplicate list included
        v = check_exactly_once("R1 all rounds", c, sim)
        log("R1 totals: {rounds} rounds ({mid_burst} killed mid-burst), {alerts} alerts, "
            "{qualifying} qualifying, lost {lost}, "
            "duplicated {duplicated}, adopted {adopted} (lookup calls {lookups}, dropped answers "
            "{drops})".format(**totals))
        results.check("R1: 0 lost, 0 duplicated over all rounds",
                      totals["lost"] == 0 and totals["duplicated"] == 0 and not v["sim_duplicates"],
                      str(totals))
        results.check("R1: dropped answers were adopted, not re-created",
                      totals["drops"] == 0 or totals["adopted"] >= 1, str(totals))
    return totals


# --------------------------------------------------------------------------------------------
# R2: FreeScout down mid-burst
# --------------------------------------------------------------------------------------------

def case_r2(args, rng):
    """A burst of 500 alerts; shortly after it commits FreeScout goes away in three phases:
    connection refused, then 503 (no Retry-After), then requests that hang until the bridge's
    timeout.  Afterwards everything is delivered exactly once, and the number of requests the
    bridge made during the outage is small: the circuit breaker pauses all sending and probes
    with a single request instead of retrying each of the ~500 jobs.  Then a 1 s blip during a
    second burst: sending must resume within seconds, not after the breaker's 30 s cap."""
    phase = 20.0 if args.long else 5.0
    bound = 80 if args.long else 50
    timeout_ms = 1500
    with Rig("r2", settings={"freescout.request_timeout": str(timeout_ms)}) as rig:
        c, sim = rig.cluster, rig.sim
        first, last, qualifying = insert_burst(c, 500, 1.0, rng)
        time.sleep(0.1)  # mid-burst: part of it is through
        seq_before = last_request_seq(sim)
        t_start = time.time()
        sim.faults({"mode": "refuse", "duration_s": phase},
                   {"mode": "status", "status": 503, "duration_s": phase},
                   {"mode": "timeout", "duration_s": phase})
        delivered_before = c.scalar("SELECT count(*) FROM freescout_tickets")
        time.sleep(3 * phase)
        t_end = time.time()
        sim.faults()  # also lets go of the requests still held by the timeout fault
        drained = drain(c, timeout=180)
        arrivals = [e for e in sim.requests(seq_before) if t_start <= e["t"] <= t_end]
        by_status = {}
        for e in arrivals:
            key = e["fault"] or str(e["status"])
            by_status[key] = by_status.get(key, 0) + 1
        failed = c.sql("SELECT CASE WHEN http_status IS NOT NULL THEN 'HTTP ' || http_status "
                       "            WHEN error_message ~* 'refused|connect to' THEN 'refused' "
                       "            WHEN error_message ~* 'timed? ?out|timeout' THEN 'timeout' "
                       "            WHEN error_message ~* 'empty reply|reset|recv failure|send failure' "
                       "                 THEN 'reset' "
                       "            ELSE 'other: ' || error_message END, "
                       "       count(*) FROM freescout_sync_log "
                       "WHERE direction = 'to_freescout' AND NOT success GROUP BY 1 ORDER BY 1")
        failed_total = sum(n for _, n in failed)
        after = [e for e in sim.requests(seq_before) if e["t"] > t_end and e["status"] and e["status"] < 300]
        recovery = (after[0]["t"] - t_end) if after else None
        v = check_exactly_once("R2", c, sim)
        counts = sync_log_counts(c)
        log(f"R2: outage {3 * phase:.0f}s (refuse/503/timeout {phase:.0f}s each), burst 500, "
            f"{delivered_before} tickets before the outage; failed calls recorded {failed_total} "
            f"{dict(failed)}; simulator arrivals during the outage {len(arrivals)} {by_status}; "
            f"first success {recovery if recovery is None else round(recovery, 1)}s after the "
            f"outage ended; drained {drained:.1f}s after; lookups {counts['lookups']}, adopted "
            f"{counts['adopted']}")
        results.check(f"R2: calls that failed during the outage are bounded ({failed_total} < {bound})",
                      failed_total < bound, str(failed))
        results.check(f"R2: requests reaching FreeScout during the outage are bounded "
                      f"({len(arrivals)} < {bound})", len(arrivals) < bound, str(by_status))
        seen = dict(failed)
        log("R2: phases the bridge actually probed: " + ", ".join(
            f"{name} {'yes' if seen.get(key) else 'no'}"
            for name, key in (("refused", "refused"), ("503", "HTTP 503"), ("timeout", "timeout"))))

        # A short blip: FreeScout refuses connections for 1 s while 500 jobs are queued.  Sending
        # must resume within a few seconds of its end (the breaker starts at 0.5 s and doubles per
        # failed probe), not stall for the breaker's 30 s cap.
        insert_burst(c, 500, 1.0, rng)
        time.sleep(0.1)
        blip_start = time.time()
        seq_blip = last_request_seq(sim)
        sim.faults({"mode": "refuse", "duration_s": 1.0})
        time.sleep(1.0)
        blip_end = time.time()
        drain(c, timeout=120)
        blip_failed = c.scalar("SELECT count(*) FROM freescout_sync_log WHERE NOT success "
                               "AND created_at >= to_timestamp(%s)", (blip_start,))
        after_blip = [e for e in sim.requests(seq_blip) if e["t"] > blip_end and e["status"]]
        blip_recovery = (after_blip[0]["t"] - blip_end) if after_blip else None
        log(f"R2 blip: 1 s of refused connections mid-burst cost {blip_failed} failed calls; the first "
            f"request after it came {blip_recovery if blip_recovery is None else round(blip_recovery, 1)}s "
            f"after the blip ended")
        results.check("R2 blip: sending resumes within 5 s after a 1 s outage",
                      blip_recovery is not None and blip_recovery < 5.0,
                      f"{blip_recovery}s: {blip_failed} concurrent failures raised the breaker's pause "
                      "to its cap at once")
        check_exactly_once("R2 after the blip", c, sim)
        return dict(failed=failed_total, arrivals=len(arrivals), recovery_s=recovery,
                    blip_recovery_s=blip_recovery,
                    lost=len(v["lost"]), duplicated=len(v["duplicated"]))


# --------------------------------------------------------------------------------------------
# R3: 429 with Retry-After
# --------------------------------------------------------------------------------------------

def case_r3(args, rng):
    """The first create gets 429 with Retry-After: 2.  The next attempt of that job must come at
    least 2 s later (freescout_sync_log created_at, and the simulator's arrival times), and the
    ticket is created."""
    with Rig("r3") as rig:
        c, sim = rig.cluster, rig.sim
        sim.faults({"mode": "status", "status": 429, "retry_after": 2, "path_regex": CREATE_PATH,
                    "count": 1})
        seq = last_request_seq(sim)
        alert = c.scalar("INSERT INTO alerts (title, severity) VALUES ('throttled', 4) RETURNING alert_id")
        drain(c, timeout=60)
        rows = c.sql("SELECT http_status, success, created_at, "
                     "       extract(epoch FROM created_at - lag(created_at) OVER (ORDER BY log_id)) "
                     "FROM freescout_sync_log WHERE alert_id = %s AND event_type IN ('create', 'lookup') "
                     "ORDER BY log_id", (alert,))
        posts = [e for e in sim.requests(seq) if e["method"] == "POST" and e["path"] == "/api/conversations"]
        arrival_gap = posts[1]["t"] - posts[0]["t"] if len(posts) >= 2 else None
        log_gap = float(rows[1][3]) if len(rows) >= 2 else None
        log(f"R3: create calls {[(r[0], r[1]) for r in rows]}; gap between the 429 and the retry: "
            f"sync_log {log_gap if log_gap is None else round(log_gap, 3)}s, simulator arrivals "
            f"{arrival_gap if arrival_gap is None else round(arrival_gap, 3)}s")
        results.check("R3: the first create got 429, the second succeeded",
                      len(rows) == 2 and rows[0][0] == 429 and not rows[0][1] and rows[1][1],
                      str(rows))
        results.check("R3: the retry came >= 2 s later (sync_log created_at)",
                      log_gap is not None and log_gap >= 2.0, str(log_gap))
        results.check("R3: the retry arrived >= 2 s later (simulator)",
                      arrival_gap is not None and arrival_gap >= 2.0, str(arrival_gap))
        check_exactly_once("R3", c, sim)
        return dict(log_gap=log_gap, arrival_gap=arrival_gap)


# --------------------------------------------------------------------------------------------
# R4: 500 / reset / lost answer on create
# --------------------------------------------------------------------------------------------

def case_r4(args, rng):
    """A create answered with 500; one whose connection is reset (RST) before any answer; one that
    FreeScout commits but whose answer is lost (drop_after_commit), sent when a warm keep-alive
    connection is there to be reused; and a reset followed by a lost answer.  The bridge must see
    every failure, look the conversation up before creating again, adopt the one whose answer was
    lost, and no alert may end up with two conversations.

    The warm connection matters: libcurl re-sends a request by itself when a reused keep-alive
    connection dies before any answer ("Connection died, retrying a fresh connect").  For a POST
    that was committed, that silent second POST creates a second conversation."""
    out = {}
    with Rig("r4") as rig:
        c, sim = rig.cluster, rig.sim
        for mode, faults in (
                ("500", [{"mode": "status", "status": 500}]),
                ("reset", [{"mode": "reset"}]),
                ("drop_after_commit on a warm connection", [{"mode": "drop_after_commit"}]),
                ("reset then drop_after_commit", [{"mode": "reset"}, {"mode": "drop_after_commit"}])):
            # warm up: a create and its tags leave an idle keep-alive connection behind
            c.sql("INSERT INTO alerts (title, severity) VALUES ('warm-up', 4)")
            drain(c, timeout=60)
            adopted_before = metric(c, "tickets_adopted") or 0
            faults = [dict({"count": 1}, **f, path_regex=CREATE_PATH) for f in faults]
            sim.faults(*faults)
            seq = last_request_seq(sim)
            alert = c.scalar("INSERT INTO alerts (title, severity) VALUES (%s, 4) RETURNING alert_id",
                             (f"fault {mode}",))
            drain(c, timeout=60)
            calls = c.sql("SELECT event_type, http_status, success, payload->>'adopted' "
                          "FROM freescout_sync_log WHERE alert_id = %s AND event_type IN ('create', 'lookup') "
                          "ORDER BY log_id", (alert,))
            markers = sim.stats()["markers"].get(f"alert:{alert}", 0)
            posts = [e["fault"] or e["status"] for e in sim.requests(seq)
                     if e["method"] == "POST" and e["path"] == "/api/conversations"]
            ticket = c.scalar("SELECT freescout_id FROM freescout_tickets WHERE alert_id = %s", (alert,))
            failed_seen = sum(1 for call in calls if call[0] == "create" and not call[2])
            log(f"R4 {mode}: bridge calls {calls}; POSTs reaching FreeScout {posts}; conversations "
                f"with the marker: {markers}; ticket -> {ticket}")
            results.check(f"R4 {mode}: one ticket, one conversation", ticket is not None and markers == 1,
                          f"ticket {ticket}, conversations {markers}")
            results.check(f"R4 {mode}: the bridge saw every failed POST (no silent re-send)",
                          failed_seen == len(faults) and len(posts) == len(calls) - sum(
                              1 for call in calls if call[0] == "lookup"),
                          f"{failed_seen} failed creates recorded for {len(faults)} faults; POSTs {posts}")
            results.check(f"R4 {mode}: the retry looked the conversation up first",
                          any(call[0] == "lookup" for call in calls), str(calls))
            if "drop_after_commit" in mode:
                results.check(f"R4 {mode}: the lookup adopted the conversation",
                              any(call[3] == "true" for call in calls) and calls[-1][0] == "lookup", str(calls))
                results.check(f"R4 {mode}: the tickets_adopted metric counted it",
                              (metric(c, "tickets_adopted") or 0) == adopted_before + 1,
                              f"{adopted_before} -> {metric(c, 'tickets_adopted')}")
            out[mode] = dict(calls=len(calls), posts=posts, conversations=markers)
        check_exactly_once("R4", c, sim)
    return out


# --------------------------------------------------------------------------------------------
# R5: 4xx dead-letters, freescout_retry_dead() revives
# --------------------------------------------------------------------------------------------

def case_r5(args, rng):
    """With freescout.mailbox_id = 999 (unknown to FreeScout) a create is refused with a 4xx: the
    job goes dead at once with the reason in last_error and is not retried; after the setting is
    fixed, freescout_retry_dead() delivers it."""
    with Rig("r5") as rig:
        c, sim = rig.cluster, rig.sim
        c.set(freescout__mailbox_id="999")
        time.sleep(0.5)  # the worker picks the reload up at its next turn
        seq = last_request_seq(sim)
        alert = c.scalar("INSERT INTO alerts (title, severity) VALUES ('wrong mailbox', 4) RETURNING alert_id")
        drain(c, timeout=60)
        job = c.sql("SELECT state, attempts, last_error FROM freescout_outbox WHERE alert_id = %s", (alert,))
        time.sleep(3.0)  # nothing may be retried meanwhile
        posts = [e for e in sim.requests(seq) if e["method"] == "POST"]
        job_later = c.sql("SELECT state, attempts FROM freescout_outbox WHERE alert_id = %s", (alert,))
        log(f"R5: job {job}; POSTs reaching FreeScout {[(e['status'], e['body'][:60]) for e in posts]}")
        results.check("R5: the job is dead-lettered after one attempt",
                      len(job) == 1 and job[0][0] == "dead" and job[0][1] == 1, str(job))
        results.check("R5: last_error names the reason (HTTP 4xx, mailbox)",
                      bool(job) and job[0][2] is not None and "HTTP 4" in job[0][2]
                      and "ailbox" in job[0][2], str(job))
        results.check("R5: not retried (one POST, still dead 3 s later)",
                      len(posts) == 1 and job_later == [("dead", 1)], f"{len(posts)} POSTs, {job_later}")
        dead = c.sql("SELECT event_type, http_status, success FROM freescout_sync_log WHERE alert_id = %s",
                     (alert,))
        results.check("R5: the failed call is in freescout_sync_log", len(dead) == 1 and not dead[0][2],
                      str(dead))
        c.set(freescout__mailbox_id="1")
        time.sleep(0.5)
        revived = c.scalar("SELECT freescout_retry_dead()")
        drain(c, timeout=60)
        results.check("R5: freescout_retry_dead() revived one job", revived == 1, str(revived))
        check_exactly_once("R5 after retry_dead", c, sim)
        return dict(last_error=job[0][2] if job else None)


# --------------------------------------------------------------------------------------------
# R7: streaming standby, failover mid-burst
# --------------------------------------------------------------------------------------------

class Standby(harness.Cluster):
    """A streaming standby of `primary`, made with pg_basebackup -R into this cluster's paths."""

    def __init__(self, workdir, primary, name="standby"):
        settings = dict(primary.settings)
        # The promoted standby has no standby of its own: with '*' here every commit after the
        # promotion would wait forever for a synchronous standby.
        settings["synchronous_standby_names"] = "''"
        settings["primary_conninfo"] = (f"'host={primary.sockdir} port={primary.port} user=postgres "
                                        f"application_name={name}'")
        super().__init__(workdir, name=name, settings=settings)
        self.primary = primary

    def basebackup(self):
        subprocess.run([os.path.join(self.bindir, "pg_basebackup"), "-h", self.primary.sockdir,
                        "-p", str(self.primary.port), "-U", "postgres", "-D", self.datadir, "-R",
                        "-X", "stream", "-c", "fast", "--no-sync"], check=True,
                       stdout=subprocess.DEVNULL)
        # pg_basebackup -R wrote primary_conninfo into postgresql.auto.conf, which write_conf
        # replaces with our settings (that carry an equivalent primary_conninfo).
        os.chmod(self.datadir, 0o700)
        self.write_conf()
        open(os.path.join(self.datadir, "standby.signal"), "a").close()
        return self

    def promote(self):
        self.pg_ctl("promote")


def case_r7(args, rng):
    """A streaming standby on loopback.  The worker must not run on it (it starts only when recovery
    finishes).  A burst starts on the primary, the primary is stopped with -m immediate in the
    middle of it, the standby is promoted, and its worker finishes the burst: every qualifying
    alert exactly once in FreeScout, none lost.

    The primary runs with synchronous_standby_names = '*' (once the standby streams): a claim then
    commits only after the standby has flushed it, and the worker sends no request before its claim
    has committed.  So every request that reached FreeScout belongs to a claim the standby knows
    about; after promotion that job is in flight there, is re-queued with needs_lookup, and looks
    for its conversation before creating one.  With asynchronous replication the standby could
    miss the claim (and the ticket row) of a conversation that exists, and create it again."""
    rounds = 3 if args.long else 1
    out = []
    for number in range(1, rounds + 1):
        with Rig(f"r7-{number}") as rig:
            primary, sim = rig.cluster, rig.sim
            standby = rig.add_cluster(Standby(rig.workdir, primary))
            standby.basebackup().start()
            harness.wait_until(lambda: primary.sql(
                "SELECT 1 FROM pg_stat_replication WHERE application_name = 'standby' "
                "AND state = 'streaming'", dbname="postgres"), timeout=30, what="standby streaming")
            primary.set(synchronous_standby_names="'*'")
            harness.wait_until(lambda: primary.sql(
                "SELECT 1 FROM pg_stat_replication WHERE application_name = 'standby' "
                "AND sync_state = 'sync'", dbname="postgres"), timeout=30, what="standby synchronous")
            time.sleep(1.5)  # a worker would have started by now if it were going to
            on_standby = standby.sql("SELECT count(*) FROM pg_stat_activity "
                                     "WHERE backend_type = 'freescout_bridge worker'", dbname="postgres")[0][0]
            in_recovery = standby.scalar("SELECT pg_is_in_recovery()")
            results.check(f"R7 round {number}: no worker on the standby", in_recovery and on_standby == 0,
                          f"in recovery {in_recovery}, workers {on_standby}")
            results.check(f"R7 round {number}: the worker runs on the primary",
                          primary.worker_pid() is not None)

            # FreeScout at 30 ms a request: ~1,000 tickets take ~2 s at the default
            # concurrency, so a stop 0.2-1.0 s into the burst lands in its middle
            sim.configure(latency_ms=30)
            first, last, qualifying = insert_burst(primary, 2000, 0.5, rng)
            delay = rng.uniform(0.2, 1.0)
            time.sleep(delay)
            tickets_on_primary = None
            try:
                tickets_on_primary = primary.scalar("SELECT count(*) FROM freescout_tickets")
            except psycopg.Error:
                pass
            primary.stop("immediate")
            conversations_at_stop = sim.stats()["conversations"]
            sim.configure(latency_ms=0)
            standby.promote()
            wait_ready(standby)
            worker = wait_worker(standby, timeout=30)
            drained = drain(standby, timeout=180)
            alerts_on_standby = standby.scalar("SELECT count(*) FROM alerts")
            v = check_exactly_once(f"R7 round {number}", standby, sim)
            counts = sync_log_counts(standby)
            log(f"R7 round {number}: primary stopped -m immediate {delay:.2f}s after the burst "
                f"({qualifying}/2000 qualifying, ~{tickets_on_primary} tickets recorded, "
                f"{conversations_at_stop} conversations in FreeScout at the stop); standby promoted, "
                f"worker {worker}, drained in {drained:.1f}s; lost {len(v['lost'])}, duplicated "
                f"{len(v['duplicated'])}, lookups {counts['lookups']}, adopted {counts['adopted']}")
            results.check(f"R7 round {number}: the standby has the whole burst", alerts_on_standby == 2000,
                          str(alerts_on_standby))
            results.check(f"R7 round {number}: the failover happened mid-burst",
                          conversations_at_stop < qualifying, f"{conversations_at_stop} of {qualifying}")
            out.append(dict(lost=len(v["lost"]), duplicated=len(v["duplicated"]),
                            adopted=counts["adopted"], at_stop=conversations_at_stop))
    return out


# --------------------------------------------------------------------------------------------

CASES = {"R1": case_r1, "R2": case_r2, "R3": case_r3, "R4": case_r4, "R5": case_r5, "R7": case_r7}


def main():
    global KEEP
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--long", action="store_true", help="the full form (minutes)")
    parser.add_argument("--only", help="comma-separated cases, e.g. R1,R3")
    parser.add_argument("--seed", type=int, help="random seed (printed when not given)")
    parser.add_argument("--burst", type=int, help="alerts per R1 burst (default 2000)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directories")
    args = parser.parse_args()
    KEEP = args.keep
    if os.geteuid() == 0:
        sys.exit("run as the postgres user: su postgres -c '/usr/bin/python3 test/fault_suite.py'")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    log(f"seed {seed} ({'long' if args.long else 'bounded'} form)")
    wanted = [name.strip().upper() for name in args.only.split(",")] if args.only else list(CASES)
    started = time.monotonic()
    figures = {}
    for name in wanted:
        rng = random.Random(f"{seed}-{name}")
        case_started = time.monotonic()
        try:
            figures[name] = CASES[name](args, rng)
        except Exception as error:  # noqa: BLE001 - a crashed case is a failed case, go on
            traceback.print_exc()
            results.check(f"{name} ran to the end", False, f"{type(error).__name__}: {error}")
        log(f"{name} took {time.monotonic() - case_started:.1f}s")
    log(f"figures: {figures}")
    log(f"total {time.monotonic() - started:.1f}s")
    sys.exit(results.finish())


if __name__ == "__main__":
    main()
