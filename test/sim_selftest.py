#!/usr/bin/env python3
"""Self-test of freescout_sim.py: starts the simulator, checks its main behaviours over HTTP.

Usage: /usr/bin/python3 test/sim_selftest.py [--bench SECONDS]

Prints one line per check and "N passed, M failed"; exits non-zero on any failure. With --bench
it then measures requests/s with 8 client threads on keep-alive connections.
"""

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import freescout_sim  # noqa: E402 - the module under test sits next to this file

API_KEY = freescout_sim.DEFAULT_API_KEY
SECRET = freescout_sim.DEFAULT_WEBHOOK_SECRET
ISO_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


# --------------------------------------------------------------------------------------------
# Plumbing
# --------------------------------------------------------------------------------------------

class Reply:
    def __init__(self, status, headers, raw):
        self.status, self.headers, self.raw = status, headers, raw

    @property
    def json(self):
        return json.loads(self.raw)


class Client:
    """Keep-alive HTTP client for one port."""

    def __init__(self, port, timeout=5):
        self.port, self.timeout = port, timeout
        self.connection = None

    def request(self, method, path, body=None, key=API_KEY, headers=None, raw=None):
        sent = {}
        if body is not None or raw is not None:
            sent["Content-Type"] = "application/json"
        if key:
            sent["X-FreeScout-API-Key"] = key
        sent.update(headers or {})
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        if self.connection is None:
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            self.connection.request(method, path, body=data, headers=sent)
            response = self.connection.getresponse()
            return Reply(response.status, response.headers, response.read())
        except Exception:
            self.close()
            raise

    def close(self):
        if self.connection is not None:
            self.connection.close()
            self.connection = None


class Receiver:
    """A webhook endpoint that records requests and can fail the first few."""

    def __init__(self):
        self.received = []
        self.failures_left = 0
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._changed:
                    failing = receiver.failures_left > 0
                    receiver.failures_left -= failing
                    receiver.received.append((self.headers, body))
                    receiver._changed.notify_all()
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def clear(self):
        with self._changed:
            self.received.clear()
            self.failures_left = 0

    def wait_for(self, event, timeout=4.0):
        """The first received request whose X-FreeScout-Event is `event`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for headers, body in self.received:
                    if headers.get("X-FreeScout-Event") == event:
                        return headers, body
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {event} webhook within {timeout}s; got "
                                         f"{[h.get('X-FreeScout-Event') for h, _ in self.received]}")
                self._changed.wait(remaining)


class Sim:
    """The simulator subprocess plus clients for both ports."""

    def __init__(self, *args):
        self.directory = tempfile.TemporaryDirectory()
        port_file = os.path.join(self.directory.name, "ports.json")
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "freescout_sim.py"), "--port", "0", "--control-port", "0",
             "--port-file", port_file, "--quiet", *args])
        deadline = time.monotonic() + 10
        while not os.path.exists(port_file):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("simulator did not start")
            time.sleep(0.02)
        with open(port_file, encoding="utf-8") as handle:
            self.ports = json.load(handle)
        self.api = Client(self.ports["api"])
        self._control = Client(self.ports["control"])

    def control(self, path, body=None, method=None):
        reply = self._control.request(method or ("POST" if body is not None else "GET"), path, body=body, key=None)
        if reply.status != 200:
            raise AssertionError(f"control {path} -> {reply.status} {reply.raw!r}")
        return reply.json

    def stop(self):
        self.api.close()
        self._control.close()
        self.process.terminate()
        self.process.wait(timeout=5)
        self.directory.cleanup()


def expect(actual, expected, what):
    if actual != expected:
        raise AssertionError(f"{what}: expected {expected!r}, got {actual!r}")


def expect_true(condition, what):
    if not condition:
        raise AssertionError(what)


def alert_payload(alert_id, **extra):
    payload = {"type": "email", "mailboxId": 1, "subject": f"SIEM Alert #{alert_id}: Brute force on srv-01",
               "customer": {"email": "siem@example.org", "firstName": "SIEM", "lastName": "System"},
               "threads": [{"type": "customer", "text": "Alert details"}]}
    payload.update(extra)
    return payload


def create(sim, alert_id, **extra):
    reply = sim.api.request("POST", "/api/conversations", alert_payload(alert_id, **extra))
    expect(reply.status, 201, f"create alert {alert_id}")
    return reply.json


def webhook_events(sim):
    return [record["event"] for record in sim.control("/_sim/webhooks")]


TESTS = []


def check(function):
    TESTS.append(function)
    return function


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------

@check
def authentication(sim, receiver):
    unauthorized = b'{"message":"Not Authorized"}'
    reply = sim.api.request("GET", "/api/users", key=None)
    expect((reply.status, reply.raw), (401, unauthorized), "no key")
    expect(sim.api.request("GET", "/api/users", key="wrong").status, 401, "wrong key")
    expect(sim.api.request("GET", "/api/users", key=None, headers={"x-freescout-api-key": API_KEY}).status,
           200, "lower-case header")
    expect(sim.api.request("GET", f"/api/users?api_key={API_KEY}", key=None).status, 200, "api_key parameter")
    expect(sim.api.request("GET", "/api/users?api_key=wrong").status, 401, "api_key parameter wins over header")


@check
def create_returns_201_resource_id_and_object(sim, receiver):
    reply = sim.api.request("POST", "/api/conversations", alert_payload(1, subject="SIEM Alert #1: Café / test"))
    expect(reply.status, 201, "status")
    body = reply.json
    expect(reply.headers["Resource-ID"], str(body["id"]), "Resource-ID")
    expect((body["id"], body["number"], body["status"], body["state"]), (1, 1, "active", "published"), "fields")
    expect((body["assignee"], body["closedBy"], body["closedAt"]), (None, None, None), "unassigned and open")
    expect(body["_embedded"]["threads"][0]["type"], "customer", "thread type")
    expect(body["_embedded"]["threads"][0]["action"]["associatedEntities"], [], "associatedEntities")
    expect_true(ISO_RE.match(body["createdAt"]), "createdAt format")
    expect_true(b"Caf\\u00e9 \\/ test" in reply.raw, "PHP escaping of / and non-ASCII in raw output")


@check
def validation_errors_have_exact_bodies(sim, receiver):
    payload = alert_payload(1)
    del payload["subject"]
    reply = sim.api.request("POST", "/api/conversations", payload)
    expect((reply.status, reply.raw), (400, b'{"message":"Error occurred","_embedded":{"errors":[{"path":"subject",'
                                            b'"message":"`subject` parameter is required","source":"JSON"}]}}'),
           "missing subject")
    reply = sim.api.request("POST", "/api/conversations", alert_payload(1, mailboxId=99))
    expect(reply.json["_embedded"]["errors"][0], {"path": "mailboxId", "message": "Mailbox not found",
                                                  "source": "JSON"}, "unknown mailbox")
    reply = sim.api.request("POST", "/api/conversations", alert_payload(1, threads=["text"]))
    expect(reply.json["_embedded"]["errors"][0]["path"], "threads", "threads must hold objects")
    reply = sim.api.request("POST", "/api/conversations", alert_payload(1, threads=[{"type": "note", "text": "x"}]))
    expect(reply.json["_embedded"]["errors"][0]["message"], "`user` parameter is required", "note needs user")
    reply = sim.api.request("POST", "/api/conversations", raw=b'{"subject": broken')
    expect(reply.json["_embedded"]["errors"][0]["path"], "subject", "malformed JSON reads as no input")
    reply = sim.api.request("POST", "/api/conversations", headers={"Content-Type": "text/plain"},
                            raw=json.dumps(alert_payload(1)).encode())
    expect(reply.status, 400, "a body without a JSON Content-Type is ignored, as by Laravel")
    expect(sim.control("/_sim/stats")["conversations"], 0, "nothing created")


@check
def status_strings_and_reply_rules(sim, receiver):
    expect(create(sim, 1, status=3)["status"], "active", "integer status becomes active")
    expect(create(sim, 2, status="closed")["status"], "closed", "string status")
    agent_only = alert_payload(3, threads=[{"type": "message", "text": "We are on it", "user": 7}])
    reply = sim.api.request("POST", "/api/conversations", agent_only)
    expect(reply.json["status"], "pending", "agent message alone makes it pending")
    expect(reply.json["createdBy"]["type"], "user", "created by the user")


@check
def tags_ignored_on_create_and_replaced_by_put(sim, receiver):
    conv = create(sim, 1, tags=["siem", "critical"])
    body = sim.api.request("GET", "/api/conversations/1?embed=tags").json
    expect(body["_embedded"], {"threads": [], "tags": []}, "tags not applied; embed without threads")
    reply = sim.api.request("PUT", f"/api/conversations/{conv['id']}/tags", {"tags": ["SIEM", " critical "]})
    expect((reply.status, reply.raw, reply.headers["Content-Length"]), (204, b"", "0"), "PUT tags")
    tags = sim.api.request("GET", "/api/conversations/1?embed=tags,threads").json["_embedded"]["tags"]
    expect([tag["name"] for tag in tags], ["siem", "critical"], "normalized tags")
    sim.api.request("PUT", "/api/conversations/1/tags", {"tags": ["critical"]})
    tags = sim.api.request("GET", "/api/conversations/1?embed=tags").json["_embedded"]["tags"]
    expect([tag["name"] for tag in tags], ["critical"], "full replacement")
    sim.control("/_sim/config", {"tags_module": False})
    reply = sim.api.request("PUT", "/api/conversations/1/tags", {"tags": []})
    expect((reply.status, reply.raw), (400, b'{"message":"Tags module is not installed or not activated",'
                                            b'"_embedded":{"errors":[]}}'), "inactive module")


@check
def custom_fields_only_as_id_value_list(sim, receiver):
    values = {field["id"]: field["value"] for field in create(sim, 1, customFields=[{"id": 3, "value": 12345}])
              ["customFields"]}
    expect(values, {3: "12345", 4: "", 5: "", 6: ""}, "list form applied, values are strings")
    values = {field["name"]: field["value"] for field in create(sim, 2, customFields={"alert_id": 2})["customFields"]}
    expect(values["alert_id"], "", "object form ignored")
    reply = sim.api.request("PUT", "/api/conversations/2/custom_fields", {"customFields": [{"id": 4, "value": "High"}]})
    expect(reply.status, 204, "PUT custom_fields")
    fields = sim.api.request("GET", "/api/conversations/2").json["customFields"]
    expect(fields[1], {"id": 4, "name": "severity", "value": "High", "text": ""}, "field after PUT")


@check
def update_needs_by_user_and_makes_lineitems(sim, receiver):
    create(sim, 1)
    reply = sim.api.request("PUT", "/api/conversations/1", {"status": "closed"})
    expect(reply.json["_embedded"]["errors"][0]["message"], "byUser parameter is required.", "missing byUser")
    reply = sim.api.request("PUT", "/api/conversations/1", {"byUser": 99, "assignTo": 7})
    expect(reply.json["_embedded"]["errors"][0]["message"], "User not found.", "unknown byUser")
    reply = sim.api.request("PUT", "/api/conversations/1", {"byUser": 7, "status": "closed", "assignTo": 9})
    expect((reply.status, reply.raw), (204, b""), "PUT")
    body = sim.api.request("GET", "/api/conversations/1").json
    expect((body["status"], body["closedBy"], body["assignee"]["id"]), ("closed", 7, 9), "closed and assigned")
    actions = [thread["action"]["type"] for thread in body["_embedded"]["threads"]]
    expect(actions, ["changed-ticket-assignee", "changed-ticket-status", ""], "lineitems newest first")
    expect(body["_embedded"]["threads"][1]["body"], None, "lineitem body")
    sim.api.request("PUT", "/api/conversations/1", {"byUser": 7, "status": 2, "assignTo": -1, "subject": "renamed"})
    body = sim.api.request("GET", "/api/conversations/1").json
    expect((body["status"], body["assignee"], body["closedBy"], body["subject"]), ("active", None, None, "renamed"),
           "integer status re-activates, -1 unassigns")
    expect(webhook_events(sim), ["convo.created", "convo.status", "convo.assigned", "convo.status"],
           "no webhook for unassigning or the subject")


@check
def unknown_routes_methods_and_ids(sim, receiver):
    create(sim, 1)
    reply = sim.api.request("PATCH", "/api/conversations/1", {"status": "closed"})
    expect((reply.status, reply.headers["Allow"]), (405, "GET, HEAD, PUT, DELETE, OPTIONS"), "PATCH")
    not_found = b'{"message":"Not Found","_embedded":{"errors":[]}}'
    reply = sim.api.request("GET", "/api/conversations/42")
    expect((reply.status, reply.raw), (404, not_found), "unknown conversation")
    reply = sim.api.request("GET", "/api/nothing")
    expect((reply.status, reply.raw), (404, not_found), "unknown route")
    expect(sim.api.request("DELETE", "/api/conversations/1").status, 204, "delete")
    expect(sim.api.request("GET", "/api/conversations/1").status, 404, "deleted forever")


@check
def list_filters_sorting_and_paging(sim, receiver):
    for alert_id in range(1, 6):
        create(sim, alert_id, mailboxId=2 if alert_id == 5 else 1)
    sim.api.request("PUT", "/api/conversations/2", {"byUser": 1, "status": "closed", "assignTo": 7})
    page = sim.api.request("GET", "/api/conversations?pageSize=2&page=2").json
    expect(page["page"], {"size": 2, "totalElements": 5, "totalPages": 3, "number": 2}, "envelope")
    expect([conv["id"] for conv in page["_embedded"]["conversations"]], [3, 2], "default createdAt desc")
    expect(page["_embedded"]["conversations"][0]["_embedded"]["threads"], [], "threads omitted")

    def ids(query):
        reply = sim.api.request("GET", "/api/conversations?" + query)
        expect(reply.status, 200, query)
        return [conv["id"] for conv in reply.json["_embedded"]["conversations"]]

    expect(ids("subject=siem%20alert%20%233:"), [3], "subject, case-insensitive")
    expect(ids("status=closed"), [2], "status")
    expect(ids("status=closed,%20pending"), [2], "status list")
    expect(ids("status=bogus"), [5, 4, 3, 2, 1], "unknown status is no filter")
    expect(ids("mailboxId=2"), [5], "mailboxId")
    expect(ids("mailboxId=1,2&sortOrder=asc&sortField=number"), [1, 2, 3, 4, 5], "sorting")
    expect(ids("number=4"), [4], "number")
    expect(ids("assignedTo=7"), [2], "assignedTo")
    expect(ids("assignedTo="), [5, 4, 3, 1], "assignedTo empty means unassigned")
    expect(ids("updatedSince=2000-01-01T00:00:00Z&createdSince=2000-01-01T00:00:00Z&pageSize=1"), [5], "since")
    expect(ids("updatedSince=2999-01-01T00:00:00Z"), [], "updatedSince in the future")
    threads = sim.api.request("GET", "/api/conversations?embed=threads&number=1").json
    expect(len(threads["_embedded"]["conversations"][0]["_embedded"]["threads"]), 1, "embed=threads")


@check
def thread_creation(sim, receiver):
    create(sim, 1)
    reply = sim.api.request("POST", "/api/conversations/1/threads", {"type": "note", "text": "Escalated", "user": 7})
    expect((reply.status, reply.headers["Resource-ID"]), (201, str(reply.json["id"])), "note created")
    expect((reply.json["type"], reply.json["createdBy"]["id"]), ("note", 7), "note object")
    reply = sim.api.request("POST", "/api/conversations/1/threads", {"type": "message", "text": "Done", "user": 7,
                                                                    "status": 3})
    expect(reply.status, 201, "reply with integer status")
    body = sim.api.request("GET", "/api/conversations/1").json
    expect((body["status"], body["closedBy"], body["threadsCount"]), ("closed", 7, 2), "integer status accepted here")
    reply = sim.api.request("POST", "/api/conversations/1/threads", {"type": "weird", "text": "hi"})
    expect(reply.json["type"], "customer", "unknown type becomes customer")
    reply = sim.api.request("POST", "/api/conversations/1/threads", {"type": "note"})
    expect(reply.json["_embedded"]["errors"][0]["path"], "text", "text required")
    expect(sim.api.request("POST", "/api/conversations/9/threads", {"type": "note", "text": "x", "user": 1}).status,
           404, "unknown conversation")
    expect(webhook_events(sim), ["convo.created", "convo.note.created", "convo.status",
                                 "convo.agent.reply.created", "convo.customer.reply.created"], "thread events")


@check
def signature_test_vector(sim, receiver):
    body = freescout_sim.php_json({"id": 1, "number": 1, "status": "closed", "subject": "Café / test"})
    expect(body, '{"id":1,"number":1,"status":"closed","subject":"Caf\\u00e9 \\/ test"}', "PHP encoding")
    expect(freescout_sim.real_signature(SECRET, body.encode()), "3d3RbuWrUoyObB9XyKZ5WUfGlqo=", "signature")


@check
def webhooks_are_delivered_signed(sim, receiver):
    sim.control("/_sim/config", {"webhook_url": receiver.url})
    create(sim, 1, subject="SIEM Alert #1: a/b")
    headers, body = receiver.wait_for("convo.created")
    expect([name for name in headers.keys() if name.startswith("X-")],
           ["X-FreeScout-Event", "X-FreeScout-Signature"], "header names as FreeScout writes them")
    expected = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha1).digest()).decode()
    expect(headers["X-FreeScout-Signature"], expected, "signature over the raw body")
    expect_true(b"a\\/b" in body, "raw body escapes slashes")
    expect(json.loads(body)["id"], 1, "body is the bare conversation")
    sim.api.request("POST", "/api/conversations/1/threads", {"type": "note", "text": "SIEM: contained", "user": 1})
    receiver.wait_for("convo.note.created")
    sim.api.request("PUT", "/api/conversations/1", {"byUser": 1, "status": "closed"})
    headers, body = receiver.wait_for("convo.status")
    expect(json.loads(body)["status"], "closed", "API change fires the webhook (feedback loop)")
    record = sim.control("/_sim/webhooks")[-1]
    expect((record["event"], record["body"].encode()), ("convo.status", body), "record keeps the raw body")


@check
def failed_webhooks_are_retried(sim, receiver):
    receiver.failures_left = 1
    sim.control("/_sim/config", {"webhook_url": receiver.url})
    create(sim, 1)
    deadline = time.monotonic() + 4
    while True:
        deliveries = sim.control("/_sim/webhooks")[0]["deliveries"]
        if len(deliveries) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    expect([(d["attempt"], d["status"], d["ok"]) for d in deliveries], [(1, 500, False), (2, 200, True)],
           "retry after a 500")
    expect(receiver.received[0][1], receiver.received[1][1], "retry re-sends the original body")


@check
def spec_webhook_format(sim, receiver):
    sim.control("/_sim/config", {"webhook_url": receiver.url, "webhook_format": "spec"})
    create(sim, 1)
    deadline = time.monotonic() + 4
    while not receiver.received and time.monotonic() < deadline:
        time.sleep(0.05)
    headers, body = receiver.received[0]
    envelope = json.loads(body)
    expect((envelope["event"], envelope["data"]["conversation"]["id"]), ("conversation.created", 1), "envelope")
    expect(headers["X-FreeScout-Signature"], hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
           "hex HMAC-SHA256")
    expect_true("X-FreeScout-Event" not in headers, "no event header")


@check
def undo_delay_holds_user_events(sim, receiver):
    sim.control("/_sim/config", {"undo_delay": 0.4})
    sim.api.request("POST", "/api/conversations",
                    alert_payload(1, threads=[{"type": "message", "text": "Started by an agent", "user": 7}]))
    expect(webhook_events(sim), [], "user-created conversation waits for the undo window")
    time.sleep(0.7)
    expect(webhook_events(sim), ["convo.created"], "sent after the undo window")


@check
def analyst_actions(sim, receiver):
    create(sim, 1)
    expect(sim.control("/_sim/act", {"conversation": 1, "action": "assign", "user": 7}), {"ok": True}, "assign")
    reply = sim.control("/_sim/act", {"conversation": 1, "action": "note", "text": "Looking", "user": 7})
    expect_true(reply["thread_id"] > 0, "note thread id")
    sim.control("/_sim/act", {"conversation": 1, "action": "status", "status": "closed", "user": 7})
    sim.control("/_sim/act", {"conversation": 1, "action": "customer_reply", "text": "Still broken"})
    sim.control("/_sim/act", {"conversation": 1, "action": "agent_reply", "text": "Fixed", "user": 9})
    sim.control("/_sim/act", {"conversation": 1, "action": "delete", "user": 7})
    expect(webhook_events(sim), ["convo.created", "convo.assigned", "convo.note.created", "convo.status",
                                 "convo.customer.reply.created", "convo.status", "convo.agent.reply.created",
                                 "convo.deleted"], "UI events; the reply's status change is reported too")
    body = sim.control("/_sim/conversations/1")
    expect((body["status"], body["state"], body["assignee"]["id"]), ("pending", "deleted", 7), "state after actions")
    reply = sim._control.request("POST", "/_sim/act", {"conversation": 5, "action": "delete"}, key=None)
    expect(reply.status, 404, "unknown conversation")


@check
def users_mailboxes_and_webhook_registration(sim, receiver):
    users = sim.api.request("GET", "/api/users?email=anna@example.org").json["_embedded"]["users"]
    expect([(user["id"], user["role"]) for user in users], [(7, "user")], "users by e-mail")
    expect(sim.api.request("GET", "/api/users/9").json["lastName"], "Petrov", "user")
    expect(sim.api.request("GET", "/api/users/2").status, 404, "unknown user")
    mailboxes = sim.api.request("GET", "/api/mailboxes").json["_embedded"]["mailboxes"]
    expect([mailbox["name"] for mailbox in mailboxes], ["Support", "SOC"], "mailboxes")
    fields = sim.api.request("GET", "/api/mailboxes/1/custom_fields").json["_embedded"]["custom_fields"]
    expect([(field["id"], field["name"], field["type"]) for field in fields],
           [(3, "alert_id", "number"), (4, "severity", "singleline"), (5, "computer", "singleline"),
            (6, "mitre_tactic", "singleline")], "custom field definitions")
    reply = sim.api.request("POST", "/api/webhooks", {"url": receiver.url, "events": ["bogus", "convo.status"]})
    expect((reply.status, reply.json["events"]), (201, {"1": "convo.status"}), "unknown event dropped, PHP-style")
    reply = sim.api.request("POST", "/api/webhooks", {"url": receiver.url, "events": ["convo.created"]})
    expect((reply.headers["Resource-ID"], reply.json["events"]), ("2", ["convo.created"]), "registered")
    create(sim, 1)
    receiver.wait_for("convo.created")
    expect(sim.api.request("DELETE", "/api/webhooks/2").status, 204, "unregister")
    expect(sim.api.request("DELETE", "/api/webhooks/2").status, 404, "already gone")


@check
def fault_status_with_retry_after(sim, receiver):
    sim.control("/_sim/faults", {"mode": "status", "status": 503, "retry_after": "2", "count": 1,
                                 "path_regex": "^POST /api/conversations$"})
    expect(sim.api.request("GET", "/api/users").status, 200, "other routes unaffected")
    reply = sim.api.request("POST", "/api/conversations", alert_payload(1))
    expect((reply.status, reply.headers["Retry-After"]), (503, "2"), "fault answer")
    expect(sim.control("/_sim/stats")["conversations"], 0, "action not performed")
    create(sim, 1)


@check
def fault_reset_sends_rst(sim, receiver):
    sim.control("/_sim/faults", {"mode": "reset", "count": 1})
    try:
        sim.api.request("POST", "/api/conversations", alert_payload(1))
        raise AssertionError("expected a connection reset")
    except ConnectionResetError:
        pass
    expect(sim.control("/_sim/stats")["conversations"], 0, "action not performed")
    expect(sim.control("/_sim/requests")[-1]["fault"], "reset", "logged")


@check
def fault_drop_after_commit_creates_duplicates(sim, receiver):
    sim.control("/_sim/faults", {"mode": "drop_after_commit", "count": 1})
    try:
        sim.api.request("POST", "/api/conversations", alert_payload(7))
        raise AssertionError("expected the answer to be lost")
    except (ConnectionResetError, http.client.RemoteDisconnected):
        pass
    stats = sim.control("/_sim/stats")
    expect((stats["conversations"], stats["duplicates"]), (1, []), "committed without an answer")
    create(sim, 7)  # a naive client retrying
    stats = sim.control("/_sim/stats")
    expect((stats["markers"], stats["duplicates"]), ({"alert:7": 2}, ["alert:7"]), "duplicate detected")


@check
def fault_refuse_closes_the_port(sim, receiver):
    sim.api.request("GET", "/api/users")  # an open keep-alive connection must be cut too
    sim.control("/_sim/faults", {"mode": "refuse", "duration_s": 1})
    for client in (sim.api, Client(sim.ports["api"])):
        try:
            client.request("GET", "/api/users")
            raise AssertionError("expected the connection to fail")
        except (ConnectionRefusedError, ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError):
            pass
    try:
        socket.create_connection(("127.0.0.1", sim.ports["api"]), timeout=1).close()
        raise AssertionError("expected connection refused")
    except ConnectionRefusedError:
        pass
    deadline = time.monotonic() + 3
    while True:
        try:
            expect(sim.api.request("GET", "/api/users").status, 200, "recovered")
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@check
def fault_timeout_hangs_until_cleared(sim, receiver):
    sim.control("/_sim/faults", {"mode": "timeout"})
    started = time.monotonic()
    try:
        Client(sim.ports["api"], timeout=0.5).request("GET", "/api/users")
        raise AssertionError("expected a client timeout")
    except TimeoutError:
        pass
    expect_true(time.monotonic() - started >= 0.45, "client waited")
    sim.control("/_sim/faults", {"mode": "none"})
    expect(sim.api.request("GET", "/api/users").status, 200, "after clearing")


@check
def request_log_and_keep_alive(sim, receiver):
    for _ in range(20):
        expect(sim.api.request("GET", "/api/mailboxes").status, 200, "keep-alive request")
    first_socket = sim.api.connection.sock
    create(sim, 1)
    expect_true(sim.api.connection.sock is first_socket, "one connection for all requests")
    log = sim.control("/_sim/requests?since=20")
    expect([(entry["seq"], entry["method"], entry["status"]) for entry in log],
           [(21, "POST", 201)], "log since")
    expect(log[0]["headers"]["X-FreeScout-API-Key"], "***", "key masked")
    expect(json.loads(log[0]["body"])["subject"], alert_payload(1)["subject"], "raw body")
    stats = sim.control("/_sim/stats")
    expect((stats["requests"], stats["by_route"]["GET /api/mailboxes"], stats["by_status"]["201"]), (21, 20, 1),
           "counters")


@check
def reset_clears_everything(sim, receiver):
    create(sim, 1)
    create(sim, 1)
    sim.control("/_sim/config", {"custom_fields_module": False})
    sim.control("/_sim/reset", {})
    stats = sim.control("/_sim/stats")
    expect((stats["conversations"], stats["requests"], stats["markers"]), (0, 0, {}), "cleared")
    expect(create(sim, 2)["id"], 1, "ids start again")
    expect(len(sim.control("/_sim/conversations")[0]["customFields"]), 0, "summary")
    expect(sim.control("/_sim/config")["custom_fields_module"], True, "modules re-enabled")


# --------------------------------------------------------------------------------------------
# Runner and benchmark
# --------------------------------------------------------------------------------------------

def run_checks(sim, receiver):
    passed = failed = 0
    for function in TESTS:
        sim.control("/_sim/reset", {})
        sim.control("/_sim/config", {"webhook_url": None, "webhook_format": "real", "undo_delay": 0})
        receiver.clear()
        sim.api.close()
        try:
            function(sim, receiver)
        except Exception:
            failed += 1
            print(f"FAIL {function.__name__}\n{traceback.format_exc()}", flush=True)
        else:
            passed += 1
            print(f"ok   {function.__name__}", flush=True)
    return passed, failed


def bench(sim, seconds):
    """Requests/s with 8 threads on keep-alive connections, for a read and a write workload."""
    sim.control("/_sim/reset", {})
    for alert_id in range(100):
        create(sim, alert_id)
    workloads = {
        "GET /api/conversations/{id}": lambda client, n: client.request("GET", f"/api/conversations/{n % 100 + 1}"),
        "POST /api/conversations": lambda client, n: client.request("POST", "/api/conversations",
                                                                    alert_payload(1000 + n)),
        "PUT /api/conversations/{id}": lambda client, n: client.request(
            "PUT", f"/api/conversations/{n % 100 + 1}", {"byUser": 1, "status": ("active", "closed")[n % 2]}),
    }
    for name, work in workloads.items():
        counts, stop = [0] * 8, threading.Event()

        def worker(index):
            client = Client(sim.ports["api"])
            while not stop.is_set():
                work(client, index * 1_000_000 + counts[index])
                counts[index] += 1
            client.close()

        threads = [threading.Thread(target=worker, args=(index,)) for index in range(8)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        stop.set()
        for thread in threads:
            thread.join()
        print(f"bench {name}: {sum(counts) / (time.monotonic() - started):.0f} requests/s", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=float, metavar="SECONDS", help="also measure capacity for this long")
    args = parser.parse_args()
    started = time.monotonic()
    receiver = Receiver()
    sim = Sim()
    try:
        passed, failed = run_checks(sim, receiver)
        print(f"{passed} passed, {failed} failed in {time.monotonic() - started:.1f}s", flush=True)
        if args.bench:
            bench(sim, args.bench)
    finally:
        sim.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
