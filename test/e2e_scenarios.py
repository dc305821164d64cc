#!/usr/bin/env python3
"""End-to-end test: the integration spec's scenarios through the reference SIEM API.

Starts a temporary PostgreSQL with freescout_bridge (harness.Cluster), the FreeScout
simulator posting real-format signed webhooks to the SIEM API, and siem_api/app.py under
uvicorn; then drives everything over HTTP as the SIEM UI and a FreeScout analyst would:

  1. alert -> ticket -> assign -> notes -> close -> reopen (spec scenario 1)
  2. manual "Create ticket", idempotent, 404 for a missing alert (spec scenario 2)
  3. incident with several alerts -> one ticket; status both ways (spec scenario 3)
  plus: no echoes in either direction, a forged signature, a lost webhook repaired by
  freescout_sync().

Usage (as a non-root user that can run PostgreSQL, from a directory it can read):
    /usr/bin/python3 test/e2e_scenarios.py
Prints one line per check and "e2e: N passed, M failed"; exits non-zero on failure.
"""

import base64
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import httpx  # noqa: E402

from harness import (WEBHOOK_SECRET, Cluster, Results, Simulator, free_port,  # noqa: E402
                     stop_process, wait_until)

WEBHOOK_PATH = "/api/v1/integrations/freescout/webhook"
TIMEOUT = 10  # seconds for anything that crosses the worker, FreeScout and a webhook


class App:
    """siem_api/app.py under uvicorn, on its own port."""

    def __init__(self, workdir, dsn, port):
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(os.path.join(workdir, "app.log"), "ab")
        env = dict(os.environ, SIEM_DSN=dsn, PYTHONDONTWRITEBYTECODE="1")
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", "-m", "uvicorn", "siem_api.app:app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=self.url, timeout=30)
        wait_until(self._ready, timeout=20, interval=0.1, what="SIEM API start")

    def _ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError("the SIEM API exited during start; see app.log")
        try:
            return self.http.get("/openapi.json").status_code == 200
        except httpx.TransportError:
            return False

    def stop(self):
        self.http.close()
        stop_process(self.proc)
        self.log.close()


class E2E:
    def __init__(self, results, cluster, sim, app):
        self.r, self.db, self.sim, self.app = results, cluster, sim, app
        self.http = app.http

    # ---- checks ---------------------------------------------------------------------------------

    def check(self, name, condition, detail=""):
        return self.r.check(name, condition, detail)

    def eventually(self, name, predicate, timeout=TIMEOUT):
        """Checks that predicate() becomes truthy in time; returns its value (or None)."""
        try:
            value = wait_until(predicate, timeout=timeout, interval=0.05, what=name)
        except TimeoutError as error:
            self.check(name, False, f"({error})")
            return None
        self.check(name, True)
        return value

    def equal(self, name, got, expected):
        return self.check(name, got == expected, f"(expected {expected!r}, got {got!r})")

    # ---- observing ------------------------------------------------------------------------------

    def row(self, query, params=None):
        """One row as a dict, or None."""
        with self.db.connect() as conn:
            cur = conn.execute(query, params)
            found = cur.fetchone()
            return dict(zip([c.name for c in cur.description], found)) if found else None

    def rows(self, query, params=None):
        with self.db.connect() as conn:
            cur = conn.execute(query, params)
            return [dict(zip([c.name for c in cur.description], found)) for found in cur.fetchall()]

    def ticket(self, column, ident):
        return self.row(f"SELECT * FROM freescout_tickets WHERE {column} = %s", (ident,))

    def request_mark(self):
        return self.sim.stats()["requests"]

    def webhook_mark(self):
        return self.sim.stats()["webhooks"]

    def puts_since(self, mark, conversation_id):
        return [req for req in self.sim.requests(mark)
                if req["method"] == "PUT" and req["path"] == f"/api/conversations/{conversation_id}"]

    def settle(self, mark, what):
        """Waits until FreeScout delivered every webhook generated since `mark` to the SIEM API
        (delivered means answered, so applied and committed); checks each got a 2xx."""
        def delivered():
            records = self.sim.webhooks(mark)
            return records if all(rec["deliveries"] for rec in records) else None
        records = wait_until(delivered, timeout=TIMEOUT, interval=0.05, what=f"webhooks of {what}")
        bad = [(rec["event"], rec["deliveries"][-1]["status"]) for rec in records
               if not rec["deliveries"][-1]["ok"]]
        self.check(f"{what}: every webhook accepted by the SIEM API ({len(records)})", not bad, f"{bad}")
        return records

    def no_echo(self, what, conversation_id, request_mark, column, ident):
        """After a change that came from FreeScout: nothing is queued or sent back."""
        self.equal(f"{what}: no status job queued back to FreeScout",
                   self.db.scalar(f"SELECT count(*) FROM freescout_outbox WHERE kind = 'status' AND {column} = %s",
                                  (ident,)), 0)
        self.db.wait_queue_empty(TIMEOUT)
        self.equal(f"{what}: no PUT sent back to FreeScout", self.puts_since(request_mark, conversation_id), [])

    def siem_get(self, kind, ident):
        reply = self.http.get(f"/api/v1/{kind}/{ident}")
        return reply.json() if reply.status_code == 200 else {"_status": reply.status_code}

    def mentions(self, conv_id, alert_ids):
        """How often each alert is named in a conversation: the incident body's list of
        correlated alerts ("<li>#12 ...") plus "Alert #12 joined" notes."""
        threads = self.sim.conversation(conv_id)["_embedded"]["threads"]
        body = threads[-1]["body"] or ""
        return {alert_id: body.count(f"<li>#{alert_id} ") + sum(
            1 for th in threads if th["type"] == "note" and f"Alert #{alert_id} joined" in (th["body"] or ""))
            for alert_id in alert_ids}

    # ---- scenario 1 -------------------------------------------------------------------------------

    def scenario_alert_lifecycle(self):
        title = 'Brute force <script>alert("x")</script> on DC01 & VPN'
        started = time.monotonic()
        alert_id = self.db.scalar(
            "INSERT INTO alerts (title, description, severity, computer, username, source_ip, "
            " first_seen_at, event_count, mitre_attack_tactic, mitre_attack_technique) "
            "VALUES (%s, %s, 4, 'DC01', 'administrator', '10.0.0.66', now(), 1532, "
            " 'Credential Access', 'T1110 Brute Force') RETURNING alert_id",
            (title, "1532 failed logons <img src=x onerror=alert(1)>"))
        ticket = self.eventually("s1: high-severity alert gets a ticket",
                                 lambda: self.ticket("alert_id", alert_id))
        if ticket is None:
            return
        self.check("s1: ticket created within 5 s", time.monotonic() - started < 5,
                   f"({time.monotonic() - started:.1f}s)")
        conv_id = ticket["freescout_id"]
        conv = self.sim.conversation(conv_id)
        self.equal("s1: subject carries the marker and the raw title", conv["subject"],
                   f"SIEM Alert #{alert_id}: {title}")
        body = conv["_embedded"]["threads"][-1]["body"]
        self.check("s1: body is HTML-escaped",
                   "&lt;script&gt;" in body and "<script>" not in body and "<img" not in body, body[:300])
        self.check("s1: body has the reference marker", f"Reference: freescout_bridge alert:{alert_id}" in body)
        self.check("s1: body has the alert's context", "DC01" in body and "10.0.0.66" in body
                   and "T1110 Brute Force" in body)
        def tag_names():
            return {tag["name"] for tag in self.sim.conversation(conv_id)["_embedded"].get("tags", [])}
        tags = self.eventually("s1: tags siem, critical, credential-access set",
                               lambda: tag_names() >= {"siem", "critical", "credential-access"} and tag_names())
        self.check("s1: tags were set with PUT .../tags", any(
            req["method"] == "PUT" and req["path"] == f"/api/conversations/{conv_id}/tags"
            for req in self.sim.requests(0)), f"{tags}")
        self.db.wait_queue_empty(TIMEOUT)

        alert = self.siem_get("alerts", alert_id)
        self.equal("s1: GET alert shows the ticket number", alert.get("freescout_ticket_number"), conv["number"])
        self.equal("s1: GET alert shows the ticket url", alert.get("freescout_ticket_url"),
                   f"{self.sim.url}/conversation/{conv_id}")

        # the analyst assigns the ticket to herself
        mark = self.webhook_mark()
        self.sim.act(conv_id, "assign", user=7, by=7)
        self.settle(mark, "s1 assign")
        ticket = self.ticket("alert_id", alert_id)
        self.equal("s1: assignee stored in the SIEM", (ticket["assignee_id"], ticket["assignee_name"]),
                   (7, "Anna Ivanova"))
        self.equal("s1: GET alert shows the assignee", self.siem_get("alerts", alert_id).get("freescout_assignee_name"),
                   "Anna Ivanova")

        # investigation notes in FreeScout
        mark = self.webhook_mark()
        first = self.sim.act(conv_id, "note", user=7,
                             text="<p>Checked <b>DC01</b> &amp; the VPN logs<script>steal()</script></p>")
        second = self.sim.act(conv_id, "note", user=9, text="Password of <i>administrator</i> reset")
        self.settle(mark, "s1 notes")
        log = self.rows("SELECT * FROM freescout_worklog WHERE alert_id = %s AND direction = 'from_freescout' "
                        "ORDER BY worklog_id", (alert_id,))
        self.equal("s1: one work log row per FreeScout note (thread ids)",
                   sorted(row["freescout_thread_id"] for row in log), sorted([first["thread_id"], second["thread_id"]]))
        self.equal("s1: note text sanitised to plain text", [row["body"] for row in log],
                   ["Checked DC01 & the VPN logs", "Password of administrator reset"])
        self.equal("s1: note authors", [row["author"] for row in log], ["Anna Ivanova", "Boris Petrov"])
        self.equal("s1: GET alert shows the work log",
                   [entry["body"] for entry in self.siem_get("alerts", alert_id).get("worklog", [])],
                   ["Checked DC01 & the VPN logs", "Password of administrator reset"])

        # the analyst closes the ticket
        mark, req_mark = self.webhook_mark(), self.request_mark()
        self.sim.act(conv_id, "status", status="closed", user=7)
        self.settle(mark, "s1 close")
        alert = self.row("SELECT status, resolution FROM alerts WHERE alert_id = %s", (alert_id,))
        self.equal("s1: closed in FreeScout -> alert resolved", (alert["status"], alert["resolution"]),
                   ("resolved", "resolved"))
        self.equal("s1: ticket status closed", self.ticket("alert_id", alert_id)["status"], "closed")
        self.no_echo("s1 close", conv_id, req_mark, "alert_id", alert_id)

        # ... and reopens it
        mark, req_mark = self.webhook_mark(), self.request_mark()
        self.sim.act(conv_id, "status", status="active", user=7)
        self.settle(mark, "s1 reopen")
        self.equal("s1: reopened in FreeScout -> alert acknowledged",
                   self.db.scalar("SELECT status FROM alerts WHERE alert_id = %s", (alert_id,)), "acknowledged")
        self.no_echo("s1 reopen", conv_id, req_mark, "alert_id", alert_id)
        self.equal("s1: still no duplicate work log rows",
                   self.db.scalar("SELECT count(*) FROM freescout_worklog WHERE alert_id = %s", (alert_id,)), 2)

        # a note written in the SIEM reaches FreeScout once and is logged once
        mark = self.webhook_mark()
        reply = self.http.post(f"/api/v1/alerts/{alert_id}/notes",
                               json={"text": "Contained: <b>DC01</b> isolated", "author": "Ivan Petrov"})
        self.equal("s1: POST note -> 201", reply.status_code, 201)
        worklog_id = reply.json().get("worklog_id")
        marker = f"freescout_bridge note:{worklog_id}"
        self.eventually("s1: SIEM note posted to FreeScout", lambda: any(
            marker in (th["body"] or "") for th in self.sim.conversation(conv_id)["_embedded"]["threads"]))
        self.db.wait_queue_empty(TIMEOUT)
        self.settle(mark, "s1 SIEM note")
        notes = [th for th in self.sim.conversation(conv_id)["_embedded"]["threads"] if marker in (th["body"] or "")]
        self.equal("s1: SIEM note appears once in FreeScout", len(notes), 1)
        self.check("s1: SIEM note HTML-escaped in FreeScout", notes and "&lt;b&gt;DC01&lt;/b&gt;" in notes[0]["body"]
                   and "Ivan Petrov" in notes[0]["body"], notes[0]["body"] if notes else "")
        rows = self.rows("SELECT * FROM freescout_worklog WHERE alert_id = %s AND body LIKE '%%Contained%%'",
                         (alert_id,))
        self.equal("s1: SIEM note logged once (its webhook adds no row)",
                   [(row["worklog_id"], row["direction"]) for row in rows], [(worklog_id, "to_freescout")])
        self.equal("s1: SIEM note knows its FreeScout thread", rows[0]["freescout_thread_id"] if rows else None,
                   notes[0]["id"] if notes else "?")

        # the SIEM marks the alert a false positive -> FreeScout closes; its webhook is absorbed
        mark, req_mark = self.webhook_mark(), self.request_mark()
        reply = self.http.patch(f"/api/v1/alerts/{alert_id}", json={"status": "false_positive"})
        self.equal("s1: PATCH alert -> 200", reply.status_code, 200)
        self.eventually("s1: false_positive in the SIEM -> conversation closed",
                        lambda: self.sim.conversation(conv_id)["status"] == "closed")
        self.db.wait_queue_empty(TIMEOUT)
        self.settle(mark, "s1 SIEM false positive")
        self.equal("s1: one PUT {byUser, status: closed}", [
            (isinstance(json.loads(req["body"]).get("byUser"), int), json.loads(req["body"]).get("status"))
            for req in self.puts_since(req_mark, conv_id)], [(True, "closed")])
        self.equal("s1: FreeScout's webhook for our PUT leaves the alert alone", self.db.scalar(
            "SELECT status FROM alerts WHERE alert_id = %s", (alert_id,)), "false_positive")
        self.equal("s1: ...and queues nothing back", self.db.scalar("SELECT count(*) FROM freescout_outbox"), 0)

        # errors of the routes
        self.equal("s1: note on a missing alert -> 404", self.http.post(
            "/api/v1/alerts/987654321/notes", json={"text": "x"}).status_code, 404)
        self.equal("s1: blank note -> 400", self.http.post(
            f"/api/v1/alerts/{alert_id}/notes", json={"text": "   "}).status_code, 400)
        self.equal("s1: note with a NUL character -> 400", self.http.post(
            f"/api/v1/alerts/{alert_id}/notes", json={"text": "a\u0000b"}).status_code, 400)
        self.equal("s1: GET a missing incident -> 404", self.http.get("/api/v1/incidents/987654321").status_code, 404)
        self.equal("s1: PATCH a missing alert -> 404", self.http.patch(
            "/api/v1/alerts/987654321", json={"status": "resolved"}).status_code, 404)
        self.equal("s1: PATCH without a status -> 422", self.http.patch(
            f"/api/v1/alerts/{alert_id}", json={}).status_code, 422)

    # ---- scenario 2 -------------------------------------------------------------------------------

    def scenario_manual_ticket(self):
        alert_id = self.db.scalar("INSERT INTO alerts (title, severity, computer) "
                                  "VALUES ('Unusual PowerShell', 1, 'WS-042') RETURNING alert_id")
        self.equal("s2: low-severity alert queues no ticket",
                   self.db.scalar("SELECT count(*) FROM freescout_outbox WHERE alert_id = %s", (alert_id,)), 0)
        created_before = self.sim.stats()["conversations_created"]
        reply = self.http.post(f"/api/v1/alerts/{alert_id}/ticket")
        self.equal("s2: POST ticket -> 200", reply.status_code, 200)
        link = reply.json() if reply.status_code == 200 else {}
        ticket = self.ticket("alert_id", alert_id) or {}
        self.equal("s2: answer links the new ticket",
                   (link.get("ticket_id"), link.get("ticket_number"), link.get("ticket_url"), link.get("status")),
                   (ticket.get("ticket_id"), ticket.get("freescout_number"),
                    f"{self.sim.url}/conversation/{ticket.get('freescout_id')}", "active"))
        self.equal("s2: the conversation exists in FreeScout",
                   self.sim.conversation(ticket.get("freescout_id"))["subject"],
                   f"SIEM Alert #{alert_id}: Unusual PowerShell")
        alert = self.siem_get("alerts", alert_id)
        self.equal("s2: GET alert shows the ticket link",
                   (alert.get("freescout_ticket_number"), alert.get("freescout_ticket_url")),
                   (link.get("ticket_number"), link.get("ticket_url")))
        again = self.http.post(f"/api/v1/alerts/{alert_id}/ticket")
        self.equal("s2: second POST returns the same ticket", (again.status_code, again.json()), (200, link))
        self.db.wait_queue_empty(TIMEOUT)
        self.equal("s2: exactly one conversation created",
                   self.sim.stats()["conversations_created"] - created_before, 1)
        missing = self.http.post("/api/v1/alerts/987654321/ticket")
        self.equal("s2: missing alert -> 404", missing.status_code, 404)
        self.equal("s2: missing incident -> 404", self.http.post("/api/v1/incidents/987654321/ticket").status_code, 404)
        self.equal("s2: GET missing alert -> 404", self.http.get("/api/v1/alerts/987654321").status_code, 404)
        return alert_id, ticket.get("freescout_id")

    # ---- scenario 3 -------------------------------------------------------------------------------

    def scenario_incident(self):
        created_before = self.sim.stats()["conversations_created"]
        # the correlation engine writes the incident, then its alerts, in one transaction
        with self.db.connect(autocommit=False) as conn:
            incident_id = conn.execute(
                "INSERT INTO incidents (title, description, severity) "
                "VALUES ('Lateral movement from WS-042', 'Correlated', 4) RETURNING incident_id").fetchone()[0]
            alert_ids = [row[0] for row in conn.execute(
                "INSERT INTO alerts (title, severity, computer, incident_id) VALUES "
                "('Pass-the-hash', 4, 'WS-042', %(i)s), ('Remote service created', 3, 'SRV-7', %(i)s), "
                "('New admin share access', 2, 'SRV-7', %(i)s) RETURNING alert_id", {"i": incident_id})]
        ticket = self.eventually("s3: incident gets a ticket", lambda: self.ticket("incident_id", incident_id))
        if ticket is None:
            return
        conv_id = ticket["freescout_id"]
        linked = self.eventually("s3: every alert linked to the incident's ticket", lambda: self.db.scalar(
            "SELECT bool_and(freescout_ticket_id IS NOT DISTINCT FROM %s) FROM alerts WHERE alert_id = ANY(%s)",
            (ticket["ticket_id"], alert_ids)))
        self.db.wait_queue_empty(TIMEOUT)
        self.equal("s3: one conversation for the incident, none per alert",
                   self.sim.stats()["conversations_created"] - created_before, 1)
        self.equal("s3: no ticket rows for the alerts", self.db.scalar(
            "SELECT count(*) FROM freescout_tickets WHERE alert_id = ANY(%s)", (alert_ids,)), 0)
        self.check("s3: subject names the incident", self.sim.conversation(conv_id)["subject"].startswith(
            f"SIEM Incident #{incident_id}: "))
        incident = self.siem_get("incidents", incident_id)
        self.equal("s3: GET incident shows ticket and alerts",
                   (incident.get("freescout_ticket_number"),
                    [(a["alert_id"], a["freescout_ticket_id"]) for a in incident.get("alerts", [])]),
                   (ticket["freescout_number"], [(a, ticket["ticket_id"]) for a in alert_ids]))
        again = self.http.post(f"/api/v1/incidents/{incident_id}/ticket")
        self.equal("s3: POST incident ticket returns the existing one",
                   (again.status_code, again.json().get("ticket_id")), (200, ticket["ticket_id"]))
        if linked:
            self.equal("s3: GET alert of the incident shows the incident's ticket",
                       self.siem_get("alerts", alert_ids[0]).get("freescout_ticket_url"), ticket["ticket_url"])

        # an alert correlated later joins the same ticket with a note
        mark = self.webhook_mark()
        late = self.db.scalar("INSERT INTO alerts (title, severity, incident_id) "
                              "VALUES ('Late: <b>DCSync</b>', 4, %s) RETURNING alert_id", (incident_id,))
        self.eventually("s3: late alert linked to the incident's ticket", lambda: self.db.scalar(
            "SELECT freescout_ticket_id FROM alerts WHERE alert_id = %s", (late,)) == ticket["ticket_id"])
        self.db.wait_queue_empty(TIMEOUT)
        self.settle(mark, "s3 late alert")
        joined = [th["body"] for th in self.sim.conversation(conv_id)["_embedded"]["threads"]
                  if th["type"] == "note" and f"Alert #{late} joined" in (th["body"] or "")]
        self.check("s3: late alert announced by one escaped 'joined' note",
                   len(joined) == 1 and "&lt;b&gt;DCSync" in joined[0], f"{joined}")
        self.equal("s3: still one conversation", self.sim.stats()["conversations_created"] - created_before, 1)
        alert_ids.append(late)

        # SIEM resolves the incident -> FreeScout conversation closed
        mark, req_mark = self.webhook_mark(), self.request_mark()
        reply = self.http.patch(f"/api/v1/incidents/{incident_id}", json={"status": "resolved"})
        self.equal("s3: PATCH incident -> 200", reply.status_code, 200)
        self.eventually("s3: FreeScout conversation closed",
                        lambda: self.sim.conversation(conv_id)["status"] == "closed")
        self.db.wait_queue_empty(TIMEOUT)
        self.settle(mark, "s3 SIEM resolve")
        puts = self.puts_since(req_mark, conv_id)
        bodies = [json.loads(req["body"]) for req in puts]
        self.equal("s3: one PUT, with byUser and a string status",
                   [(isinstance(b.get("byUser"), int), b.get("status")) for b in bodies], [(True, "closed")])
        self.equal("s3: FreeScout's webhook for our PUT queues nothing back",
                   self.db.scalar("SELECT count(*) FROM freescout_outbox"), 0)
        self.equal("s3: ...and no second PUT", len(self.puts_since(req_mark, conv_id)), 1)
        self.equal("s3: incident stays resolved", self.db.scalar(
            "SELECT status FROM incidents WHERE incident_id = %s", (incident_id,)), "resolved")

        # FreeScout reopens, then closes -> incident and its alerts follow
        mark, req_mark = self.webhook_mark(), self.request_mark()
        self.sim.act(conv_id, "status", status="active", user=9)
        self.settle(mark, "s3 reopen")
        self.equal("s3: reopened in FreeScout -> incident acknowledged", self.db.scalar(
            "SELECT status FROM incidents WHERE incident_id = %s", (incident_id,)), "acknowledged")
        mark = self.webhook_mark()
        self.sim.act(conv_id, "status", status="closed", user=9)
        self.settle(mark, "s3 close")
        self.equal("s3: closed in FreeScout -> incident resolved", self.db.scalar(
            "SELECT status || '/' || resolution FROM incidents WHERE incident_id = %s", (incident_id,)),
            "resolved/resolved")
        self.equal("s3: ...and all its alerts resolved", self.db.scalar(
            "SELECT array_agg(status || '/' || resolution ORDER BY alert_id) FROM alerts WHERE incident_id = %s",
            (incident_id,)), ["resolved/resolved"] * len(alert_ids))
        self.no_echo("s3 FreeScout status", conv_id, req_mark, "incident_id", incident_id)

        # notes: the bridge's own "alert joined" notes and an incident note are not echoed
        mark = self.webhook_mark()
        reply = self.http.post(f"/api/v1/incidents/{incident_id}/notes", json={"text": "Hosts re-imaged"})
        self.equal("s3: POST incident note -> 201", reply.status_code, 201)
        self.eventually("s3: incident note posted to FreeScout", lambda: self.db.scalar(
            "SELECT freescout_thread_id IS NOT NULL FROM freescout_worklog WHERE worklog_id = %s",
            (reply.json().get("worklog_id"),)))
        self.db.wait_queue_empty(TIMEOUT)
        self.settle(mark, "s3 incident note")
        self.equal("s3: each alert mentioned once in the conversation (body list or 'joined' note)",
                   self.mentions(conv_id, alert_ids), {alert_id: 1 for alert_id in alert_ids})
        self.equal("s3: incident work log holds only the SIEM note", [
            (row["direction"], row["body"]) for row in self.rows(
                "SELECT * FROM freescout_worklog WHERE incident_id = %s", (incident_id,))],
            [("to_freescout", "Hosts re-imaged")])

    def scenario_incident_join_race(self):
        """Alerts correlated into an incident while its ticket is being created (FreeScout slow)."""
        self.sim.configure(latency_ms=1000)
        try:
            incident_id = self.db.scalar("INSERT INTO incidents (title, severity) "
                                         "VALUES ('Ransomware staging', 4) RETURNING incident_id")
            wait_until(lambda: self.sim.stats()["inflight"] > 0, timeout=TIMEOUT, what="create in flight")
            alert_ids = [row[0] for row in self.db.sql(
                "INSERT INTO alerts (title, severity, incident_id) VALUES ('Shadow copies deleted', 4, %(i)s), "
                "('Mass file rename', 3, %(i)s) RETURNING alert_id", {"i": incident_id})]
            self.db.wait_queue_empty(TIMEOUT)
        finally:
            self.sim.configure(latency_ms=0)
        ticket = self.ticket("incident_id", incident_id)
        self.equal("s3 race: alerts joining during ticket creation are linked", self.db.scalar(
            "SELECT array_agg(freescout_ticket_id ORDER BY alert_id) FROM alerts WHERE alert_id = ANY(%s)",
            (alert_ids,)), [ticket["ticket_id"]] * len(alert_ids))
        self.equal("s3 race: ...and mentioned once in the conversation",
                   self.mentions(ticket["freescout_id"], alert_ids), {alert_id: 1 for alert_id in alert_ids})

    # ---- webhook security ---------------------------------------------------------------------------

    def scenario_forged_webhook(self, alert_id, conv_id):
        before = self.row("SELECT a.status, t.status AS ticket_status, t.updated_at FROM alerts a "
                          "JOIN freescout_tickets t ON t.alert_id = a.alert_id WHERE a.alert_id = %s", (alert_id,))
        rejected_before = self.db.scalar("SELECT count(*) FROM freescout_sync_log WHERE NOT success")
        conversation = dict(self.sim.conversation(conv_id), status="closed")
        body = json.dumps(conversation).encode()
        forged = base64.b64encode(hmac.new(b"not-the-secret", body, hashlib.sha1).digest()).decode()
        reply = self.post_webhook(body, forged, "convo.status")
        self.equal("forged signature -> 401", reply.status_code, 401)
        self.equal("missing signature -> 401", self.post_webhook(body, None, "convo.status").status_code, 401)
        after = self.row("SELECT a.status, t.status AS ticket_status, t.updated_at FROM alerts a "
                         "JOIN freescout_tickets t ON t.alert_id = a.alert_id WHERE a.alert_id = %s", (alert_id,))
        self.equal("forged webhook changed nothing", after, before)
        self.eventually("forged webhook logged as failed in freescout_sync_log", lambda: self.db.scalar(
            "SELECT count(*) FROM freescout_sync_log WHERE NOT success AND direction = 'from_freescout'")
            >= rejected_before + 2)
        not_json = b"this is not json"
        self.equal("signed non-JSON body -> 400",
                   self.post_webhook(not_json, sign(not_json), "convo.status").status_code, 400)
        latin1 = '{"id":1,"subject":"caf\u00e9"}'.encode("latin-1")
        self.equal("body that is not UTF-8 -> 400",
                   self.post_webhook(latin1, sign(latin1), "convo.status").status_code, 400)
        other = json.dumps({"id": 1}).encode()
        reply = self.post_webhook(other, sign(other), "customer.created")
        self.equal("signed event that is not about a conversation -> 200, ignored",
                   (reply.status_code, "ignored" in reply.json()), (200, True))

    def post_webhook(self, body, signature, event):
        headers = {"Content-Type": "application/json", "X-FreeScout-Event": event}
        if signature is not None:
            headers["X-FreeScout-Signature"] = signature
        return self.http.post(WEBHOOK_PATH, content=body, headers=headers)

    # ---- lost webhook ---------------------------------------------------------------------------------

    def scenario_lost_webhook(self, alert_id, conv_id):
        webhook_url = self.sim.control("GET", "/_sim/config")["webhook_url"]
        mark = self.webhook_mark()
        self.sim.configure(webhook_url=None)
        try:
            self.sim.act(conv_id, "status", status="closed", user=7)
            lost = self.sim.webhooks(mark)
            self.check("lost webhook: FreeScout fired it to nobody",
                       lost and all(not rec["deliveries"] for rec in lost), f"{lost}")
            self.equal("lost webhook: alert not resolved yet", self.db.scalar(
                "SELECT status FROM alerts WHERE alert_id = %s", (alert_id,)), "new")
            req_mark = self.request_mark()
            result = self.db.scalar("SELECT freescout_sync()")
            self.check("lost webhook: freescout_sync() checked and updated it, without errors",
                       result and result.get("errors") == 0 and result.get("checked", 0) >= 1
                       and result.get("updated") == 1, f"{result}")
            self.equal("lost webhook: freescout_sync() pushed nothing back", result and result.get("pushed"), 0)
            alert = self.row("SELECT status, resolution FROM alerts WHERE alert_id = %s", (alert_id,))
            self.equal("lost webhook: alert resolved by the reconciliation",
                       (alert["status"], alert["resolution"]), ("resolved", "resolved"))
            self.equal("lost webhook: ticket closed", self.ticket("alert_id", alert_id)["status"], "closed")
            self.db.wait_queue_empty(TIMEOUT)
            self.equal("lost webhook: no PUT sent back", self.puts_since(req_mark, conv_id), [])
            again = self.db.scalar("SELECT freescout_sync()")
            self.check("lost webhook: a second freescout_sync() changes nothing",
                       again and again.get("updated") == 0 and again.get("errors") == 0, f"{again}")
        finally:
            self.sim.configure(webhook_url=webhook_url)

    # ---- running -----------------------------------------------------------------------------------

    def step(self, name, function, *args):
        """Runs one scenario; an exception is one failed check, and the next scenario still runs."""
        try:
            return function(*args)
        except Exception as error:  # noqa: BLE001 - report and go on
            traceback.print_exc()
            self.check(f"{name} ran to the end", False, f"({type(error).__name__}: {error})")
            return None


def sign(body):
    return base64.b64encode(hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha1).digest()).decode()


def main():
    results = Results("e2e")
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="fsb-e2e-")
    app_port = free_port()
    sim = cluster = app = None
    try:
        sim = Simulator(workdir, webhook_url=f"http://127.0.0.1:{app_port}{WEBHOOK_PATH}", webhook_format="real")
        cluster = Cluster(workdir, settings={"freescout.url": f"'{sim.url}'",
                                             "freescout.siem_url": "'https://siem.example.com'"})
        cluster.initdb().start().create_siem()
        cluster.wait_for_worker()
        app = App(workdir, f"host={cluster.sockdir} port={cluster.port} user=postgres dbname={cluster.dbname}",
                  app_port)
        e2e = E2E(results, cluster, sim, app)
        e2e.step("scenario 1", e2e.scenario_alert_lifecycle)
        manual = e2e.step("scenario 2", e2e.scenario_manual_ticket)
        e2e.step("scenario 3", e2e.scenario_incident)
        e2e.step("scenario 3 race", e2e.scenario_incident_join_race)
        if manual and manual[1]:
            e2e.step("forged webhook", e2e.scenario_forged_webhook, *manual)
            e2e.step("lost webhook", e2e.scenario_lost_webhook, *manual)
        else:
            results.check("scenario 2 produced a ticket for the webhook scenarios", False)
    except Exception as error:  # noqa: BLE001 - setup failures are failures too
        traceback.print_exc()
        results.check("setup", False, f"({type(error).__name__}: {error})")
    finally:
        for part in (app, sim):
            if part is not None:
                part.stop()
        if cluster is not None:
            cluster.stop()
            shutil.rmtree(cluster.sockdir, ignore_errors=True)
    print(f"# {time.monotonic() - started:.1f}s; logs in {workdir}", flush=True)
    status = results.finish()
    if status == 0:
        shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
