#!/usr/bin/env python3
"""Fuzzer for freescout_webhook(body, signature, event) against a running cluster.

A temporary cluster (harness.Cluster) with the worker, the FreeScout simulator, and a few real
tickets (alerts and an incident, with notes, replies and an assignee added in the simulator) give
realistic conversation payloads.  Each case mutates one (bit flips, truncation, splices, deep
nesting, huge numbers, wrong types for id/status/assignee/_embedded/threads, strings where
objects are expected, JSON escape sequences that do not decode to valid UTF-8 such as lone
surrogates and \\u0000, very long strings, oversized bodies, bad dates) and signs it validly
(base64 HMAC-SHA1 or hex HMAC-SHA256) or not (missing, truncated, altered, other secret, other
body, other scheme, garbage).  Invalid UTF-8 bytes cannot reach a text argument at all (the
server refuses them before the call), so they are tried through the text path as escapes.

Asserted:
  * the server never crashes: after every case the connection works, the postmaster and the
    worker keep their pids, the log has no "terminated by signal" / "server process" line;
  * every call returns a JSON object or raises a clean error with an SQLSTATE (internal errors,
    XX000, and statement timeouts count as failures);
  * a forged signature is always refused (SQLSTATE 28000, or the size / missing-body checks that
    come first) and never changes anything: alerts, incidents, freescout_tickets and
    freescout_worklog are fingerprinted before and after every block of forged cases;
  * a signature valid by the documented rules is never refused as invalid.

    su postgres -c '/usr/bin/python3 test/fuzz_webhook.py'                  # 3,000 cases, < 60 s
    su postgres -c '/usr/bin/python3 test/fuzz_webhook.py --cases 100000'   # the long form
    options: --seed N, --keep (keep the scratch directory), --save DIR (failing cases as files)

Last line: "fuzz: N passed, M failed", with a summary of outcome classes before it.
"""

import argparse
import base64
import collections
import hashlib
import hmac
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness  # noqa: E402
import psycopg  # noqa: E402

SECRET = harness.WEBHOOK_SECRET.encode()
FORGED_OK_STATES = {"28000", "54000", "22004"}  # bad signature; too large; no body (checked first)
BLOCK = 40                                      # cases per block; forged blocks are fingerprinted
STATEMENT_TIMEOUT_MS = 20000


def log(message):
    print(f"# {message}", flush=True)


# --------------------------------------------------------------------------------------------
# Signatures
# --------------------------------------------------------------------------------------------

def sig_sha1(body: bytes, secret=SECRET) -> str:
    return base64.b64encode(hmac.new(secret, body, hashlib.sha1).digest()).decode()


def sig_sha256(body: bytes, secret=SECRET) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def accepted_by_rules(body: bytes, signature) -> bool:
    """The documented verification: leading/trailing blanks and a "sha256=" prefix are ignored;
    64 hex digits are HMAC-SHA256 (any case), 28 characters base64 HMAC-SHA1."""
    if signature is None:
        return False
    s = signature.encode()
    s = s.lstrip(b" ")
    if s[:7].lower() == b"sha256=":
        s = s[7:]
    s = s.rstrip(b" ")
    if len(s) == 64 and re.fullmatch(rb"[0-9a-fA-F]{64}", s):
        return s.lower() == sig_sha256(body).encode()
    if len(s) == 28:
        return s == sig_sha1(body).encode()
    return False


def valid_signature(rng, body: bytes):
    kind = rng.random()
    if kind < 0.7:
        return sig_sha1(body)
    hexsig = sig_sha256(body)
    return rng.choice([hexsig, hexsig.upper(), "sha256=" + hexsig, "SHA256=" + hexsig,
                       "  " + hexsig + "  ", " sha256=" + hexsig, "  " + sig_sha1(body) + " "])


def forged_signature(rng, body: bytes, original: bytes):
    good1, good256 = sig_sha1(body), sig_sha256(body)

    def flip(s):
        i = rng.randrange(len(s))
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
        return s[:i] + rng.choice(alphabet.replace(s[i], "")) + s[i + 1:]

    choices = [
        lambda: None,
        lambda: "",
        lambda: " ",
        lambda: good1[:rng.randrange(1, 28)],
        lambda: good1[rng.randrange(1, 28):],
        lambda: flip(good1),
        lambda: good1 + rng.choice(["x", "=", "A", "\t", "\n"]),
        lambda: "\t" + good1,
        lambda: good1.lower() if good1.lower() != good1 else good1.upper(),
        lambda: sig_sha1(original) if original != body else flip(good1),
        lambda: sig_sha256(original) if original != body else flip(good256),
        lambda: sig_sha1(body, b"wrong secret"),
        lambda: sig_sha256(body, b"wrong secret"),
        lambda: sig_sha1(body, b""),
        lambda: flip(good256),
        lambda: good256[:63],
        lambda: good256 + "0",
        lambda: "sha256=" + good256[:62],
        lambda: "sha1=" + good1,
        lambda: hmac.new(SECRET, body, hashlib.sha1).hexdigest(),          # right MAC, hex form
        lambda: base64.b64encode(hmac.new(SECRET, body, hashlib.sha256).digest()).decode(),
        lambda: hashlib.sha1(body).hexdigest(),                             # no key at all
        lambda: base64.b64encode(hashlib.sha1(body).digest()).decode(),
        lambda: "A" * 28,
        lambda: "!" * 28,
        lambda: "\u00e9" * 14,                                              # 28 bytes, 14 chars
        lambda: "\u00e9" * 28,
        lambda: "0" * 64,
        lambda: "g" * 64,
        lambda: "x" * rng.choice([29, 100, 1000, 100000]),
        lambda: good1[:14] + "\u00e9" * 7,
        lambda: "".join(rng.choice("0123456789abcdef") for _ in range(64)),
        lambda: "".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(rng.randrange(1, 80))),
        lambda: json.dumps(good1),
        lambda: good1.replace("+", "-").replace("/", "_") if ("+" in good1 or "/" in good1) else flip(good1),
    ]
    for _ in range(10):
        sig = rng.choice(choices)()
        if sig is not None and "\x00" in sig:
            continue
        if not accepted_by_rules(body, sig):
            return sig
    return None


# --------------------------------------------------------------------------------------------
# Payload mutation
# --------------------------------------------------------------------------------------------

LONG = None  # filled lazily: long strings are shared


def interesting_values(rng):
    return [
        None, True, False, 0, -1, 1, 2, 3, 4, 5, 7, 2 ** 31 - 1, 2 ** 31, 2 ** 32 + 7, -2 ** 31 - 1,
        2 ** 53 + 1, 2 ** 63 - 1, 2 ** 63, 2 ** 64, -2 ** 63, 10 ** 30, 1e308, -1e308, 5e-324, 1.5,
        3.7, -0.0, "", " ", "0", "1", "3", "123", " 12", "12 ", "+5", "-5", "0x10", "1e3", "NaN",
        "Infinity", "\uff11\uff12", "99999999999999999999999", "active", "closed", "pending", "spam",
        "deleted", "ACTIVE", "closed\u0000x", [], {}, [1, 2], [[[]]], {"id": 1}, {"id": "x"},
        "\u202e\u0645\u0631\u062d\u0628\u0627 \U0001F600", "<script>alert(1)</script>",
        "'; DROP TABLE alerts; --", "%s%s%s%n", "\\", "\"", "x" * rng.choice([1000, 70000]),
    ]


DATES = ["2024-01-01T00:00:00Z", "2099-12-31T23:59:59Z", "1970-01-01T00:00:00Z", "0000-01-01T00:00:00Z",
         "9999-12-31T23:59:59Z", "2024-02-30T00:00:00Z", "2024-13-01T00:00:00Z", "2024-01-01T25:61:61Z",
         "9999-99-99T99:99:99Z", "2024-01-01Tgarbage", "2024-01-01T00:00:00", "2024-01-01 00:00:00",
         "2024-01-01T00:00:00+25:00", "2024-01-01T00:00:00.123456789Z", "20240101T000000Z", "yesterday",
         "2024-01-01", "", "infinity", "-infinity", "294277-01-01T00:00:00Z", "2024-01-01T00:00:00Z" * 3,
         "2024-0x-01T00:00:00Z", "1999-99-99 garbage garbage"]

ESCAPES = ["\\ud800", "\\udc00", "\\udfff", "\\ud800\\ud800", "\\udc00\\ud800", "\\ud83d\\ude00",
           "\\u0000", "\\u0001", "\\u001f", "\\uffff", "\\ufffe", "\\ufeff", "\\u", "\\u12", "\\u12g4",
           "\\x41", "\\'", "\\a", "\\", "\\U0001F600", "\\/", "\\uD800\\u0041", "\\u00e9\\u0301",
           "\\ud800x", "\\udbff\\udfff"]


def conversation_paths(doc):
    """Paths of the fields worth attacking in a conversation object."""
    base = ["id", "number", "status", "state", "subject", "updatedAt", "createdAt", "assignee",
            "assignee.id", "assignee.firstName", "assignee.lastName", "_embedded",
            "_embedded.threads", "customer", "mailboxId", "closedBy", "assignee_id"]
    threads = doc.get("_embedded", {}).get("threads") if isinstance(doc.get("_embedded"), dict) else None
    if isinstance(threads, list) and threads:
        i = random.randrange(len(threads))
        base += [f"_embedded.threads.{i}", f"_embedded.threads.{i}.id", f"_embedded.threads.{i}.type",
                 f"_embedded.threads.{i}.state", f"_embedded.threads.{i}.body",
                 f"_embedded.threads.{i}.createdAt", f"_embedded.threads.{i}.createdBy",
                 f"_embedded.threads.{i}.createdBy.firstName"]
    return base


def set_path(doc, path, value, delete=False):
    try:
        _set_path(doc, path, value, delete)
    except (ValueError, IndexError, TypeError, KeyError):
        pass  # the path does not fit this document (an earlier mutation changed its shape)


def _set_path(doc, path, value, delete):
    parts = path.split(".")
    node = doc
    for part in parts[:-1]:
        if isinstance(node, list):
            idx = int(part)
            if idx >= len(node):
                return
            node = node[idx]
        elif isinstance(node, dict):
            if part not in node or not isinstance(node[part], (dict, list)):
                node[part] = {}
            node = node[part]
        else:
            return
    last = parts[-1]
    if isinstance(node, list):
        idx = int(last)
        if idx < len(node):
            if delete:
                del node[idx]
            else:
                node[idx] = value
    elif isinstance(node, dict):
        if delete:
            node.pop(last, None)
        else:
            node[last] = value


def thread(rng, tid=None):
    return {"id": tid if tid is not None else rng.randrange(1, 10 ** 9), "type": rng.choice(["note", "customer", "message", "lineitem"]),
            "state": rng.choice(["published", "published", "draft"]), "status": "active",
            "body": rng.choice(["<p>fuzz note</p>", "plain", "<b>x</b><br>y&amp;z", "<script>bad()</script>ok",
                                "freescout_bridge note:" + str(rng.choice([1, 2, 10 ** 25, -1])),
                                "Reference: freescout_bridge alert 1", "<" * 50, "&" * 50, "<p>" * 500]),
            "createdAt": rng.choice(DATES[:6]),
            "createdBy": {"id": 7, "firstName": "Anna", "lastName": "Ivanova", "type": "user"}}


def structural_mutation(rng, doc, spec_note=False):
    """Mutates a conversation object (or a spec note's data) in place; returns a label."""
    global LONG
    target = doc
    roll = rng.random()
    if roll < 0.45:
        path = rng.choice(conversation_paths(target) if not spec_note else
                          ["conversation_id", "thread", "thread.type", "thread.body", "thread.text",
                           "thread.id", "thread.createdBy", "thread.createdAt"])
        if rng.random() < 0.15:
            set_path(target, path, None, delete=True)
            return f"delete {path.split('.')[-1]}"
        value = rng.choice(interesting_values(rng) + DATES[:8])
        set_path(target, path, value)
        return f"{path.split('.')[-1]}={type(value).__name__}"
    if roll < 0.55:
        path = rng.choice(["_embedded", "_embedded.threads", "assignee", "customer", "createdBy"])
        set_path(target, path, rng.choice(["threads", "x" * 100, 42, True, [["a"]], [1, "2", None]]))
        return "string/number where object expected"
    if roll < 0.65:
        threads = [thread(rng) for _ in range(rng.choice([1, 5, 50, 500]))]
        if rng.random() < 0.3:
            threads += [rng.choice([None, 1, "s", [], {}])] * 3
        if rng.random() < 0.2:
            threads = threads + threads  # the same thread ids twice
        set_path(target, "_embedded", {"threads": threads})
        return f"{len(threads)} threads"
    if roll < 0.72:
        set_path(target, rng.choice(["updatedAt", "_embedded.threads.0.createdAt", "createdAt"]), rng.choice(DATES))
        return "date"
    if roll < 0.8:
        if LONG is None:
            LONG = ("A" * 200_000, "\u00e9" * 150_000, "<p>" + "word " * 50_000 + "</p>", "\U0001F600" * 60_000)
        set_path(target, rng.choice(["subject", "_embedded.threads.0.body", "assignee.firstName",
                                     "status", "updatedAt"]), rng.choice(LONG))
        return "very long string"
    if roll < 0.88:
        # many keys, duplicate keys are made textually later
        for i in range(rng.choice([10, 1000])):
            target[f"k{i}"] = i
        return "many keys"
    set_path(target, "id", rng.choice([2 ** 63, 10 ** 40, -1, 0, 1e300, "1" * 400]))
    return "huge id"


def text_mutation(rng, text):
    """Mutates serialized JSON as text (stays valid UTF-8 without NUL: it must fit a text argument)."""
    roll = rng.random()
    b = bytearray(text.encode())
    if roll < 0.2 and b:
        for _ in range(rng.choice([1, 1, 2, 8, 64])):
            i = rng.randrange(len(b))
            if b[i] < 0x80:
                b[i] ^= 1 << rng.randrange(7)
                if b[i] == 0:
                    b[i] = 0x20
        return bytes(b).decode("utf-8", "replace"), "bit flips"
    if roll < 0.35:
        cut = rng.randrange(len(text) + 1)
        return text[:cut], "truncated"
    if roll < 0.5:
        # an escape sequence spliced into a string value
        positions = [m.end() for m in re.finditer(r'":"', text)] or [len(text) // 2]
        at = rng.choice(positions)
        return text[:at] + rng.choice(ESCAPES) + text[at:], "escape sequence"
    if roll < 0.6:
        i, j = sorted(rng.randrange(len(text) + 1) for _ in range(2))
        chunk = text[i:j][:5000]
        k = rng.randrange(len(text) + 1)
        return text[:k] + chunk + text[k:], "spliced chunk"
    if roll < 0.68:
        i = rng.randrange(len(text) + 1)
        return text[:i] + text[i + rng.randrange(1, 50):], "deleted bytes"
    if roll < 0.74:
        return rng.choice(["\ufeff", " \n\t", "", "[", "{", "\u2028"]) + text + rng.choice(["", " x", "}", "]", "\n{}", ",", "\u0085"]), "framing"
    if roll < 0.8:
        # a huge number literal in place of the id or the status
        lit = rng.choice(["1" * 5000, "1e999999", "-1e-999999", "0." + "0" * 5000 + "1", "-0", "1E+308",
                          "18446744073709551616", "9223372036854775808", "1.7976931348623157e309", "00012", "- 1"])
        return re.sub(r'"(id|status|conversation_id)":\s*("[^"]*"|[-0-9.eE+]+)', lambda m: f'"{m.group(1)}":{lit}', text, count=1), "huge number literal"
    if roll < 0.86:
        # duplicate keys: the first and the last differ
        return re.sub(r'^\{', '{"id":1,"status":"closed","id":"x",', text, count=1), "duplicate keys"
    if roll < 0.92:
        # raw control characters inside strings
        positions = [m.end() for m in re.finditer(r'":"', text)] or [1]
        at = rng.choice(positions)
        return text[:at] + rng.choice(["\x01", "\x1f", "\n", "\t", "\x7f", "\u0085"]) + text[at:], "raw control character"
    # replace a value with a weird type via text
    filler = rng.choice(['1,"x":', '"s","y":', 'null,"z":', '[],"w":'])
    return re.sub(r'"(_embedded|assignee|threads)":', lambda m: '"' + m.group(1) + '":' + filler, text,
                  count=1), "weird value text"


def deep_nesting(rng):
    depth = rng.choice([100, 999, 1000, 1001, 5000, 10_000, 100_000])
    kind = rng.randrange(4)
    if kind == 0:
        return "[" * depth + "]" * depth, f"nested arrays {depth}"
    if kind == 1:
        return '{"a":' * depth + "1" + "}" * depth, f"nested objects {depth}"
    if kind == 2:
        inner = '{"a":' * depth + "1" + "}" * depth
        return '{"id":1,"status":"closed","_embedded":{"threads":[' + inner + "]}}", f"nested in threads {depth}"
    return "[" * depth, f"unclosed nesting {depth}"


def oversized(rng, limit):
    pad = "x" * (limit - 20 + rng.choice([0, 1, 2, 100]))
    return '{"id":1,"subject":"' + pad + '"}', "oversized body"


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------

class Case:
    __slots__ = ("n", "body", "signature", "event", "forged", "label", "sig_label")

    def __init__(self, n, body, signature, event, forged, label, sig_label):
        self.n, self.body, self.signature, self.event = n, body, signature, event
        self.forged, self.label, self.sig_label = forged, label, sig_label

    def dump(self):
        return {"n": self.n, "label": self.label, "signature_kind": self.sig_label, "forged": self.forged,
                "event": self.event, "signature": self.signature, "body": self.body}


EVENTS = ["convo.created", "convo.status", "convo.assigned", "convo.note.created", "convo.customer.reply.created",
          "convo.agent.reply.created", "convo.deleted", "convo.deleted_forever", "convo.moved", "convo.restored",
          "customer.created", "conversation.note_added", "conversation.status_changed"]


def pick_event(rng, spec):
    if spec:
        return rng.choice([None, None, None, "", "conversation.note_added", "convo.status"])
    roll = rng.random()
    if roll < 0.8:
        return rng.choice(EVENTS)
    return rng.choice([None, "", "convo.", "conversation.", "CONVO.STATUS", "x" * 10_000, "convo." + "y" * 70_000,
                       "\u00e9v\u00e9nement", "convo.status\n", "' OR 1=1 --"])


def make_case(n, rng, bases, limit):
    """One case: body text, signature, event header, and whether the signature is forged."""
    roll = rng.random()
    spec = False
    if roll < 0.06:
        body, label = deep_nesting(rng)
        original = body
    elif roll < 0.075:
        body, label = oversized(rng, limit)
        original = body
    else:
        base = rng.choice(bases)
        spec = base.get("__spec__", False)
        doc = json.loads(json.dumps({k: v for k, v in base.items() if k != "__spec__"}))
        original = json.dumps(doc, separators=(",", ":"))
        labels = []
        if spec:
            inner = doc["data"] if "thread" in doc["data"] else doc["data"].get("conversation", {})
            target = inner
        else:
            target = doc
        for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
            labels.append(structural_mutation(rng, target, spec_note=spec and "thread" in doc["data"]))
        body = json.dumps(doc, separators=(",", ":"), ensure_ascii=rng.random() < 0.5)
        if rng.random() < 0.25:
            body = body.replace("/", "\\/")  # PHP's json_encode
        if rng.random() < 0.55:
            body, text_label = text_mutation(rng, body)
            labels.append(text_label)
        label = ", ".join(labels) or "unmutated"
    body = body.replace("\x00", " ")  # a text argument cannot hold NUL
    raw = body.encode()
    event = pick_event(rng, spec)
    if rng.random() < 0.72:
        sig = valid_signature(rng, raw)
        forged = False
        sig_label = "valid"
    else:
        sig = forged_signature(rng, raw, original.encode())
        forged = True
        sig_label = "forged"
    if rng.random() < 0.005:
        body = None  # a missing body (signature still forged or valid for the empty string)
    return Case(n, body, sig, event, forged, label, sig_label)


def fixed_corpus(bases, limit):
    """Edge cases run in every run, whatever the seed: (label, body, event)."""
    real = json.dumps(bases[0], separators=(",", ":"))
    conv_id = bases[0]["id"]
    out = []
    for depth in (1000, 1001, 10_000, 100_000):
        out.append((f"nested arrays {depth}", "[" * depth + "]" * depth, "convo.status"))
        out.append((f"nested objects {depth}", '{"a":' * depth + "1" + "}" * depth, "convo.status"))
        out.append((f"nested in threads {depth}", '{"id":%d,"_embedded":{"threads":[%s]}}'
                    % (conv_id, "[" * depth + "]" * depth), "convo.status"))
    step = max(1, len(real) // 60)
    out += [(f"truncated at {i}", real[:i], "convo.status") for i in range(0, len(real), step)]
    for lit in ("1" * 5000, "1e999999", "-1e999999", "1e-999999", "18446744073709551616", "9223372036854775808",
                "-9223372036854775809", "1.7976931348623157e309", "4294967303", "9007199254740993", "-0", "1.5"):
        out.append((f"id {lit[:20]}", '{"id":%s,"status":"closed"}' % lit, "convo.status"))
        out.append((f"status {lit[:20]}", '{"id":%d,"status":%s}' % (conv_id, lit), "convo.status"))
        out.append((f"assignee id {lit[:20]}", '{"id":%d,"assignee":{"id":%s}}' % (conv_id, lit), "convo.assigned"))
        out.append((f"thread id {lit[:20]}", '{"id":%d,"_embedded":{"threads":[{"id":%s,"type":"note",'
                    '"body":"n %s"}]}}' % (conv_id, lit, lit[:20]), "convo.note.created"))
    wrong = ['null', 'true', '1', '"x"', '[]', '{}', '[1,"a",null]', '{"id":"x"}', '"' + "s" * 100_000 + '"']
    for field in ("id", "status", "assignee", "_embedded", "updatedAt"):
        for value in wrong:
            out.append((f"{field}={value[:12]}", '{"id":%d,"%s":%s}' % (conv_id, field, value)
                        if field != "id" else '{"id":%s}' % value, "convo.status"))
    for value in wrong + ['[null,1,"s",[],{}]', '[{"type":"note"}]', '[{"type":"note","body":null}]',
                          '[{"type":{},"body":[],"state":1,"createdBy":"x","createdAt":5}]']:
        out.append((f"threads={value[:12]}", '{"id":%d,"_embedded":{"threads":%s}}' % (conv_id, value),
                    "convo.note.created"))
        out.append((f"spec thread={value[:12]}", '{"event":"conversation.note_added","data":{"conversation_id":%d,'
                    '"thread":%s}}' % (conv_id, value), None))
    for esc in ESCAPES:
        out.append((f"escape {esc}", '{"id":%d,"_embedded":{"threads":[{"id":777,"type":"note","body":"a%sb"}]}}'
                    % (conv_id, esc), "convo.note.created"))
        out.append((f"escape in key {esc}", '{"id":%d,"st%satus":"closed"}' % (conv_id, esc), "convo.status"))
    out.append(("oversized body", '{"id":1,"subject":"' + "x" * limit + '"}', "convo.status"))
    out.append(("body at the limit", '{"id":%d,"subject":"' % conv_id + "x" * (limit - 40) + '"}', "convo.status"))
    out.append(("empty body", "", "convo.status"))
    out.append(("whitespace body", " \n\t ", "convo.status"))
    out.append(("BOM", "\ufeff" + real, "convo.status"))
    return out


class Fuzzer:
    def __init__(self, cluster, save_dir):
        self.cluster = cluster
        self.save_dir = save_dir
        self.conn = None
        self.outcomes = collections.Counter()
        self.failures = []
        self.crashes = 0
        self.notable = collections.defaultdict(list)  # SQLSTATE -> examples of valid payloads refused
        self.reconnect()

    def reconnect(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001
                pass
        self.conn = self.cluster.connect()
        self.conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")

    def fingerprint(self):
        return self.conn.execute(
            "SELECT (SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY alert_id), '')) FROM alerts t), "
            "       (SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY incident_id), '')) FROM incidents t), "
            "       (SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY ticket_id), '')) FROM freescout_tickets t), "
            "       (SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY worklog_id), '')) FROM freescout_worklog t)"
        ).fetchone()

    def fail(self, case, why):
        self.failures.append((case, why))
        if len(self.failures) <= 25:
            print(f"FAILED - fuzz: case {case.n} ({case.sig_label}, {case.label}, event "
                  f"{(case.event or '')[:40]!r}): {why}", flush=True)
        if self.save_dir:
            os.makedirs(self.save_dir, exist_ok=True)
            with open(os.path.join(self.save_dir, f"case-{case.n}.json"), "w") as f:
                json.dump(dict(case.dump(), why=why), f)

    def run(self, case):
        """Runs one case; returns its outcome class."""
        try:
            row = self.conn.execute("SELECT freescout_webhook(%s, %s, %s)",
                                    (case.body, case.signature, case.event)).fetchone()
        except psycopg.OperationalError as error:
            if self.conn.closed or self.conn.broken:
                self.crashes += 1
                self.fail(case, f"connection lost: {error}")
                harness.wait_until(self._alive, timeout=120, interval=0.2, what="server after crash")
                self.reconnect()
                return "CRASH"
            return self.error_class(case, error)
        except psycopg.Error as error:
            return self.error_class(case, error)
        result = row[0]
        if case.forged:
            self.fail(case, f"forged signature accepted: {str(result)[:200]}")
            return "forged ACCEPTED"
        if not isinstance(result, dict) or result.get("success") is not True:
            self.fail(case, f"result is not a success object: {str(result)[:200]}")
            return "odd result"
        if "ignored" in result:
            return f"jsonb ignored: {result['ignored']}"
        changed = [k for k in ("status_changed", "assignee_changed") if result.get(k)]
        if result.get("notes_added"):
            changed.append("notes_added")
        if result.get("stale"):
            changed.append("stale")
        return "jsonb applied" + (f" ({', '.join(changed)})" if changed else " (no change)")

    def _alive(self):
        try:
            return self.cluster.scalar("SELECT 1") == 1
        except psycopg.Error:
            return False

    def error_class(self, case, error):
        state = getattr(error, "sqlstate", None)
        message = str(getattr(error.diag, "message_primary", None) or error).split("\n")[0]
        short = re.sub(r"\d+", "N", re.sub(r'"[^"]*("|$)', '"..."', message))[:70]
        if state is None:
            self.fail(case, f"error without SQLSTATE: {error}")
            return f"no SQLSTATE: {short}"
        if case.forged and state not in FORGED_OK_STATES:
            self.fail(case, f"forged signature got past the check: {state} {message}")
        elif not case.forged and state == "28000":
            if case.body is not None and accepted_by_rules(case.body.encode(), case.signature):
                self.fail(case, f"valid signature refused: {message}")
        elif state == "XX000":
            self.fail(case, f"internal error: {message}")
        elif state == "57014":
            self.fail(case, f"statement timeout ({STATEMENT_TIMEOUT_MS} ms): the call hangs")
        elif not case.forged and state not in ("22P02", "22004", "54000") and len(self.notable[state]) < 3:
            self.notable[state].append(f"{case.label[:40]}: {message[:90]}")
        return f"error {state}: {short}"


def prepare(cluster, sim):
    """A few real tickets with threads and an assignee; returns base payloads."""
    cluster.sql("INSERT INTO incidents (title, severity) VALUES ('Fuzz incident', 4)")
    cluster.sql("INSERT INTO alerts (title, severity, computer) "
                "SELECT 'Fuzz alert ' || g, 4, 'pc-' || g FROM generate_series(1, 4) g")
    cluster.wait_queue_empty(timeout=60)
    tickets = cluster.sql("SELECT freescout_id, alert_id, incident_id FROM freescout_tickets ORDER BY ticket_id")
    bases = []
    for conv_id, alert_id, incident_id in tickets:
        sim.act(conv_id, "note", text=f"analyst note on {conv_id}", user=7)
        sim.act(conv_id, "customer_reply", text="customer says hi")
        sim.act(conv_id, "agent_reply", text="agent answers", user=9)
        sim.act(conv_id, "assign", user=7)
        conv = sim.conversation(conv_id)
        bases.append(conv)
        bases.append({"event": "conversation.status_changed", "data": {"conversation": conv}, "__spec__": True})
        bases.append({"event": "conversation.note_added", "__spec__": True,
                      "data": {"conversation_id": conv_id,
                               "thread": {"id": 900000 + conv_id, "type": "note", "text": "spec note",
                                          "createdBy": {"firstName": "Anna", "lastName": "Ivanova"},
                                          "createdAt": "2024-05-01T10:00:00Z"}}})
    # a conversation the bridge does not know
    unknown = json.loads(json.dumps(bases[0]))
    unknown["id"] = unknown["number"] = 987654
    bases.append(unknown)
    return bases, tickets


def main():
    parser = argparse.ArgumentParser(description="fuzzer for freescout_webhook()")
    parser.add_argument("--cases", type=int, default=3000)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--save", help="directory for failing cases (JSON)")
    args = parser.parse_args()
    if os.geteuid() == 0:
        sys.exit("run as the postgres user: su postgres -c '/usr/bin/python3 test/fuzz_webhook.py'")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    random.seed(seed)
    log(f"seed {seed}, {args.cases} cases")
    results = harness.Results("fuzz")
    workdir = tempfile.mkdtemp(prefix="fsb-fuzz-", dir="/tmp")
    sim = harness.Simulator(workdir)
    cluster = harness.Cluster(workdir, settings={"freescout.url": f"'{sim.url}'"})
    started = time.monotonic()
    ok = False
    fuzz_cases = failing_cases = None
    try:
        cluster.initdb().start().create_siem()
        cluster.wait_for_worker()
        bases, tickets = prepare(cluster, sim)
        limit = int(cluster.scalar("SELECT setting FROM pg_settings WHERE name = 'freescout.webhook_max_bytes'"))
        postmaster = cluster.postmaster_pid()
        worker = cluster.worker_pid()
        log(f"{len(tickets)} tickets, {len(bases)} base payloads, webhook_max_bytes {limit}; setup "
            f"{time.monotonic() - started:.1f}s")

        # sanity: one real, validly signed webhook is applied; the same body forged is refused
        fuzz = Fuzzer(cluster, args.save)
        sane_body = json.dumps(bases[0])
        sane = Case(0, sane_body, sig_sha1(sane_body.encode()), "convo.status", False, "unmutated", "valid")
        results.check("a real, validly signed webhook is applied", fuzz.run(sane).startswith("jsonb applied"))
        forged = Case(0, sane_body, sig_sha1(sane_body.encode(), b"other"), "convo.status", True, "unmutated", "forged")
        results.check("the same webhook with a forged signature is refused", fuzz.run(forged).startswith("error 28000"))

        fuzz_started = time.monotonic()
        cases = 0
        forged_blocks = changed_blocks = 0
        by_class = collections.Counter()
        by_label = collections.Counter()
        n = 0

        # the fixed corpus, validly signed, then forged inside one fingerprinted block
        corpus = fixed_corpus(bases, limit)
        before = fuzz.fingerprint()
        for label, body, event in corpus:
            n += 1
            case = Case(n, body, forged_signature(rng, body.encode(), b""), event, True, label, "forged")
            by_class[("forged", fuzz.run(case))] += 1
        if fuzz.fingerprint() != before:
            changed_blocks += 1
            fuzz.fail(case, "state changed while the forged corpus ran")
        forged_blocks += 1
        for label, body, event in corpus:
            n += 1
            case = Case(n, body, valid_signature(rng, body.encode()), event, False, label, "valid")
            outcome = fuzz.run(case)
            by_class[("valid", outcome)] += 1
            by_label["fixed corpus"] += 1
        cases += 2 * len(corpus)
        log(f"fixed corpus: {len(corpus)} payloads, each forged and validly signed")
        target = args.cases + cases
        while cases < target:
            forged_block = rng.random() < 0.3
            block = []
            while len(block) < BLOCK and cases + len(block) < target:
                n += 1
                case = make_case(n, rng, bases, limit)
                if forged_block and not case.forged:
                    case.signature = forged_signature(rng, (case.body or "").encode(), b"")
                    case.forged, case.sig_label = True, "forged"
                if not forged_block and case.forged:
                    continue  # forged cases run in fingerprinted blocks only
                block.append(case)
            before = fuzz.fingerprint() if forged_block else None
            for case in block:
                outcome = fuzz.run(case)
                by_class[(case.sig_label, outcome)] += 1
                by_label[case.label.split(",")[0]] += 1
            cases += len(block)
            if forged_block:
                forged_blocks += 1
                after = fuzz.fingerprint()
                if after != before:
                    changed_blocks += 1
                    # find the culprit: run the block again one case at a time
                    for case in block:
                        b = fuzz.fingerprint()
                        fuzz.run(case)
                        if fuzz.fingerprint() != b:
                            fuzz.fail(case, "state changed under a forged signature")
                            break
                    else:
                        fuzz.fail(block[0], "state changed during a forged block (not reproduced singly)")
        elapsed = time.monotonic() - fuzz_started

        # the server is the one we started, and it said nothing about crashes
        crash_lines = []
        with open(cluster.logfile, errors="replace") as f:
            for line in f:
                if re.search(r"terminated by signal|server process .* was terminated|"
                             r"terminating any other active server processes|PANIC|TRAP:", line):
                    crash_lines.append(line.strip())
        results.check(f"{cases} cases ran ({cases / max(elapsed, 0.001):.0f}/s, {elapsed:.1f}s)", cases == target)
        results.check("the server never crashed (connection alive after every case)", fuzz.crashes == 0,
                      f"{fuzz.crashes} crashes")
        results.check("the postmaster kept its pid", cluster.postmaster_pid() == postmaster,
                      f"{postmaster} -> {cluster.postmaster_pid()}")
        results.check("the worker kept its pid (no crash-restart)", cluster.worker_pid() == worker,
                      f"{worker} -> {cluster.worker_pid()}")
        results.check("no crash in the server log", not crash_lines, "; ".join(crash_lines[:3]))
        results.check(f"no state change under a forged signature ({forged_blocks} fingerprinted blocks)",
                      changed_blocks == 0, f"{changed_blocks} blocks changed state")
        failing = len({case.n for case, _ in fuzz.failures})
        results.check(f"every call returned jsonb or a clean error with an SQLSTATE, forged ones refused "
                      f"({failing} failing cases)", not fuzz.failures)
        results.check("the bridge still works afterwards: a ticket is created",
                      _still_works(cluster, sim))

        log("outcome classes (signature, outcome): count")
        for (sig, outcome), count in sorted(by_class.items(), key=lambda item: (item[0][0], -item[1])):
            print(f"#   {sig:6s} {count:6d}  {outcome}", flush=True)
        log("first mutation of the cases: " + ", ".join(f"{k} {v}" for k, v in by_label.most_common(25)))
        if fuzz.notable:
            log("notable: well-formed, validly signed payloads refused with a data error (FreeScout "
                "retries such a webhook, then drops it):")
            for state, examples in sorted(fuzz.notable.items()):
                for example in examples:
                    print(f"#   {state}  {example}", flush=True)
        reasons = collections.Counter(why.split(":")[0] for _, why in fuzz.failures)
        if reasons:
            log(f"failures by kind: {dict(reasons)}")
        fuzz_cases, failing_cases = cases, failing
        ok = results.failed == 0
    finally:
        try:
            cluster.stop("immediate")
        except Exception as error:  # noqa: BLE001
            log(f"stop: {error}")
        sim.stop()
        if not cluster.postmaster_pid():
            shutil.rmtree(cluster.sockdir, ignore_errors=True)
        if args.keep or not ok:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    # the closing count is per case (each case is a check) plus the checks above
    if fuzz_cases is not None:
        results.passed += fuzz_cases - failing_cases
        results.failed += failing_cases
    sys.exit(results.finish())


def _still_works(cluster, sim):
    alert = cluster.scalar("INSERT INTO alerts (title, severity) VALUES ('after the fuzz', 4) RETURNING alert_id")
    try:
        cluster.wait_queue_empty(timeout=30)
    except TimeoutError:
        return False
    return cluster.scalar("SELECT count(*) FROM freescout_tickets WHERE alert_id = %s", (alert,)) == 1


if __name__ == "__main__":
    main()
