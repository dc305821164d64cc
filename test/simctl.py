"""Command-line access to the FreeScout simulator for the pg_regress suite.

SQL tests call it through psql's \\! and backticks.  Every command prints
something deterministic (no timestamps, no ports), so its output can live in
expected/*.out.  The simulator's control port comes from FSB_SIM_CONTROL
(default 28081, as in test/regress.conf).

  simctl.py reset                      forget all conversations and faults
  simctl.py show MARKER                one conversation, e.g. alert:3
  simctl.py count                      conversations per marker, duplicates
  simctl.py requests                   requests since the last `mark`
  simctl.py mark                       remember the current request position
  simctl.py fault JSON                 queue faults ({"mode": ...} or a list)
  simctl.py config JSON                change simulator settings
  simctl.py act MARKER ACTION [k=v]    an analyst acts in the FreeScout UI
  simctl.py webhook FIELD              last webhook: body | signature | event
"""

import json
import os
import re
import signal
import sys
import urllib.request

CONTROL = int(os.environ.get("FSB_SIM_CONTROL", "28081"))
MARK_FILE = os.environ.get("FSB_SIM_MARK", f"/tmp/fsb-simctl-{CONTROL}.mark")


def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{CONTROL}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        raw = resp.read()
        return json.loads(raw) if raw else None


def conversation_for(marker):
    kind, _, number = marker.partition(":")
    prefix = f"SIEM {'Incident' if kind == 'incident' else 'Alert'} #{number}:"
    matches = [c for c in call("GET", "/_sim/conversations") if c["subject"].startswith(prefix)]
    if not matches:
        return None, 0
    return call("GET", f"/_sim/conversations/{matches[0]['id']}"), len(matches)


def show(marker):
    conv, count = conversation_for(marker)
    if conv is None:
        print(f"{marker}: no conversation")
        return
    print(f"{marker}: {count} conversation(s)")
    print(f"subject: {conv['subject']}")
    print(f"status: {conv['status']}")
    assignee = conv.get("assignee")
    print(f"assignee: {assignee['id'] if assignee else None}")
    tags = conv.get("_embedded", {}).get("tags") or conv.get("tags") or []
    print("tags: " + ", ".join(sorted(t["name"] if isinstance(t, dict) else t for t in tags)))
    fields = [f"{f['id']}={f['value']}" for f in conv.get("customFields", []) if f.get("value")]
    print("custom fields: " + ", ".join(fields))
    threads = [t for t in conv["_embedded"]["threads"] if t["type"] != "lineitem"]
    for thread in reversed(threads):
        print(f"--- {thread['type']} thread ---")
        print(thread["body"])


def count():
    stats = call("GET", "/_sim/stats")
    for marker, n in sorted(stats["markers"].items(), key=lambda kv: (kv[0].split(":")[0], int(kv[0].split(":")[1]))):
        print(f"{marker} {n}")
    print(f"duplicates: {len(stats['duplicates'])}")


def requests():
    since = 0
    if os.path.exists(MARK_FILE):
        with open(MARK_FILE) as f:
            since = int(f.read() or 0)
    for r in call("GET", f"/_sim/requests?since={since}"):
        # ids depend on what earlier tests created: mask them
        path = re.sub(r"/conversations/\d+", "/conversations/N", r["path"].split("?")[0])
        if r["method"] == "GET" and "createdSince" in r["path"]:
            path += "?(lookup)"
        elif "?" in r["path"]:
            path += "?(query)"
        print(f"{r['method']} {path} {r['status']}")
        if r["method"] in ("POST", "PUT") and r["body"]:
            print("    " + describe_body(r["body"]))


def describe_body(raw):
    """Keys of a JSON request body, with the values that matter to the API."""
    try:
        body = json.loads(raw)
    except ValueError:
        return "(not JSON)"
    shown = []
    for key in sorted(body):
        value = body[key]
        if key in ("status", "type", "byUser", "user", "tags", "customFields", "mailboxId"):
            shown.append(f"{key}={json.dumps(value, sort_keys=True)}")
        else:
            shown.append(key)
    return "body: " + " ".join(shown)


def mark():
    reqs = call("GET", "/_sim/requests?since=0")
    with open(MARK_FILE, "w") as f:
        f.write(str(max((r["seq"] for r in reqs), default=0)))


def act(marker, action, pairs):
    conv, _ = conversation_for(marker)
    fields = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        fields[key] = int(value) if value.isdigit() else value
    result = call("POST", "/_sim/act", dict(conversation=conv["id"], action=action, **fields))
    print("ok" if result.get("ok") else result)


def webhook(field):
    hooks = call("GET", "/_sim/webhooks?since=0")
    last = hooks[-1]
    if field == "body":
        sys.stdout.write(last["body"])
    elif field == "signature":
        sys.stdout.write(last["headers"]["X-FreeScout-Signature"])
    elif field == "event":
        sys.stdout.write(last["event"])


def main(argv):
    command, args = argv[1], argv[2:]
    if command == "reset":
        call("POST", "/_sim/reset", {})
        mark()
    elif command == "show":
        show(args[0])
    elif command == "count":
        count()
    elif command == "requests":
        requests()
    elif command == "mark":
        mark()
    elif command == "fault":
        spec = json.loads(args[0])
        call("POST", "/_sim/faults", spec if "faults" in spec else {"faults": [spec]})
    elif command == "config":
        call("POST", "/_sim/config", json.loads(args[0]))
    elif command == "act":
        act(args[0], args[1], args[2:])
    elif command == "webhook":
        webhook(args[0])
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet under `| head`, like any filter
    main(sys.argv)
