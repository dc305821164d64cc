#!/usr/bin/env python3
"""FreeScout "API & Webhooks" simulator for freescout_bridge tests and benchmarks.

It answers like a FreeScout install with the API & Webhooks module (v1.0.87), as described in
shared/reference/freescout-api.md and checked against the module's PHP source: same routes,
validation messages, string enums, PHP-style JSON (`\\/`, `\\uXXXX`), paging envelopes, and
webhooks whose body is the bare conversation signed with base64 HMAC-SHA1.

A second, unauthenticated control port serves /_sim/...: statistics, the request log, every
generated webhook, fault injection (refused connections, error statuses, hangs, resets, responses
lost after commit) and analyst actions as if done in the FreeScout UI.

Standard library only; run with /usr/bin/python3 (3.11). See --help for the command line.
"""

import argparse
import base64
import collections
import contextlib
import dataclasses
import datetime
import email.utils
import functools
import hashlib
import heapq
import hmac
import html
import http.client
import itertools
import json
import os
import re
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import traceback
import typing
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_API_KEY = "d5008ed483982d9b79d908b1bc97761e"
DEFAULT_WEBHOOK_SECRET = "94b2eb8ab4323a9ad12989f5aaa7c7d2"

PAGE_SIZE = 50
PREVIEW_LENGTH = 255
WEBHOOK_TIMEOUT_S = 10
WEBHOOK_MAX_ATTEMPTS = 10
# Real FreeScout retries after about 1, 2, 4, 6 ... 16 minutes; tests need the same shape in seconds.
WEBHOOK_RETRY_DELAYS_S = (1, 2, 4, 8, 8, 8, 8, 8, 8)
GUZZLE_USER_AGENT = "GuzzleHttp/6.5.5 curl/7.88.1 PHP/8.1.2"
TIMEOUT_FAULT_S = 60
IDLE_CONNECTION_TIMEOUT_S = 300
REQUEST_LOG_SIZE = 200_000
WEBHOOK_LOG_SIZE = 100_000
LOGGED_BODY_BYTES = 4096

CONVERSATION_STATUSES = ("active", "pending", "closed", "spam")
CONVERSATION_STATES = ("draft", "published", "deleted")
CONVERSATION_TYPES = ("email", "phone", "chat")
THREAD_TYPES = ("customer", "message", "note")
THREAD_STATUS_CODES = {1: "active", 2: "pending", 3: "closed", 4: "spam", 6: "nochange"}
STATUS_LABELS = {"active": "Active", "pending": "Pending", "closed": "Closed", "spam": "Spam"}

WEBHOOK_EVENTS = (
    "convo.assigned", "convo.created", "convo.deleted", "convo.deleted_forever", "convo.restored",
    "convo.moved", "convo.status", "convo.customer.reply.created", "convo.agent.reply.created",
    "convo.note.created", "customer.created", "customer.updated",
)
# Event names of the integration spec's envelope format; events it lacks travel as "updated".
SPEC_EVENTS = {
    "convo.created": "conversation.created",
    "convo.assigned": "conversation.assigned",
    "convo.status": "conversation.status_changed",
    "convo.note.created": "conversation.note_added",
    "convo.customer.reply.created": "conversation.customer_replied",
}
SPEC_FALLBACK_EVENT = "conversation.updated"

MAILBOXES = ((1, "Support", "support@example.org"), (2, "SOC", "soc@example.org"))
USERS = (
    (1, "Bridge", "Bot", "bot@example.org", "admin"),
    (7, "Anna", "Ivanova", "anna@example.org", "user"),
    (9, "Boris", "Petrov", "boris@example.org", "user"),
)
# mailbox id -> (field id, name, type); FreeScout numbers folders and fields per install.
CUSTOM_FIELDS = {
    1: ((3, "alert_id", "number"), (4, "severity", "singleline"),
        (5, "computer", "singleline"), (6, "mitre_tactic", "singleline")),
}
FOLDER_SLOTS = {"unassigned": 1, "mine": 2, "assigned": 3, "drafts": 4, "closed": 5, "spam": 6, "deleted": 7}
FOLDERS_PER_MAILBOX = 10

MARKER_RE = re.compile(r"SIEM (Alert|Incident) #(\d+):", re.IGNORECASE)
TAG_RE = re.compile(r"<[^>]*>")
EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+")
PHP_TRIM = " \t\n\r\0\x0b"


# --------------------------------------------------------------------------------------------
# Encoding helpers: PHP and Laravel conventions
# --------------------------------------------------------------------------------------------

def php_json(value) -> str:
    """Encodes like PHP json_encode() with flags 0: compact, `\\uXXXX` for non-ASCII, `\\/`."""
    # A "/" can only occur inside JSON strings, so escaping it textually is safe.
    return json.dumps(value, separators=(",", ":")).replace("/", "\\/")


def real_signature(secret: str, body: bytes) -> str:
    """X-FreeScout-Signature of the real module: base64 of the raw HMAC-SHA1 digest."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha1).digest()).decode()


def spec_signature(secret: str, body: bytes) -> str:
    """Signature the integration spec expects: lowercase hex HMAC-SHA256."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def php_empty(value) -> bool:
    """PHP's empty(): null, false, 0, "", "0" and empty arrays."""
    if value is None or value is False:
        return True
    if isinstance(value, (int, float)):
        return value == 0
    if isinstance(value, str):
        return value in ("", "0")
    if isinstance(value, (list, dict)):
        return not value
    return False


def php_string(value) -> str:
    """PHP's (string) cast, as applied to custom field values."""
    if value is None or value is False:
        return ""
    if value is True:
        return "1"
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    if isinstance(value, (list, dict)):
        return "Array"
    return str(value)


def to_int(value):
    """An id as Eloquent's find() would read it, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value):
        return int(value)
    return None


def positive_int(value):
    """A page number or size as Laravel's paginator accepts it, or None."""
    number = to_int(value)
    return number if number is not None and number > 0 else None


def laravel_input(value):
    """Laravel's TrimStrings and ConvertEmptyStringsToNull, which FreeScout runs on all input."""
    if isinstance(value, str):
        return value.strip(PHP_TRIM) or None
    if isinstance(value, dict):
        return {key: laravel_input(item) for key, item in value.items()}
    if isinstance(value, list):
        return [laravel_input(item) for item in value]
    return value


@functools.lru_cache(maxsize=4096)
def _iso_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))


def iso_utc(timestamp):
    """FreeScout's date format; the database keeps whole seconds."""
    return None if timestamp is None else _iso_second(int(timestamp))


def parse_api_date(value) -> float:
    """utcStringToServerDate(): a date from the request, in whole seconds."""
    try:
        parsed = datetime.datetime.fromisoformat(str(value))
    except ValueError:
        raise server_error() from None  # Carbon::parse() throws, which Laravel turns into a 500
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return float(int(parsed.timestamp()))


def friendly_age(seconds: float) -> str:
    """Carbon's diffForHumans() for a past moment."""
    for size, unit in ((31536000, "year"), (2592000, "month"), (604800, "week"),
                       (86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            count = int(seconds // size)
            break
    else:
        count, unit = max(1, int(seconds)), "second"
    return f"{count} {unit}{'' if count == 1 else 's'} ago"


def text_preview(text) -> str:
    """Helper::textPreview(): the conversation preview taken from a thread body."""
    text = text if isinstance(text, str) else php_string(text)
    text = text.replace("</div>", " </div>").replace("</p>", " </p>")
    return " ".join(html.unescape(TAG_RE.sub("", text)).split())[:PREVIEW_LENGTH]


def email_list(value) -> list:
    """MailHelper::sanitizeEmails() for cc/bcc: an array or a comma list, kept if valid."""
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else []
    emails = (item.strip().lower() for item in items if isinstance(item, str))
    return list(dict.fromkeys(item for item in emails if EMAIL_RE.fullmatch(item)))


def subject_markers(subject) -> list:
    """SIEM markers in a subject: "SIEM Alert #12:" -> "alert:12", "SIEM Incident #3:" -> "incident:3"."""
    if not isinstance(subject, str):
        return []
    return list(dict.fromkeys(f"{kind.lower()}:{int(number)}" for kind, number in MARKER_RE.findall(subject)))


def like_matcher(needle: str):
    """The subject filter: case-insensitive `LIKE '%needle%'`, including its % and _ wildcards."""
    parts, escaped = [], False
    for char in needle:
        if escaped:
            parts.append(re.escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "%":
            parts.append(".*")
        elif char == "_":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL).search


def conversation_status(value) -> str:
    """Status mapping of create and update: exact strings only; anything else (even 3) is active."""
    return value if isinstance(value, str) and value in CONVERSATION_STATUSES else "active"


def thread_status(value) -> str:
    """convertThreadCodes(): thread endpoints also accept the integer codes."""
    code = 1 if value is True else to_int(value)
    if code in THREAD_STATUS_CODES:
        return THREAD_STATUS_CODES[code]
    return value if value in THREAD_STATUS_CODES.values() else "active"


# --------------------------------------------------------------------------------------------
# Responses and API errors
# --------------------------------------------------------------------------------------------

class Response(typing.NamedTuple):
    status: int
    body: bytes = b""
    headers: tuple = ()
    content_type: str = "application/json"


def status_phrase(status: int) -> str:
    return http.client.responses.get(status, "Unknown")


def api_response(status: int, payload, headers=()) -> Response:
    return Response(status, php_json(payload).encode(), headers)


NO_CONTENT = Response(204, content_type="")


def error_body(message: str, errors=()) -> dict:
    return {"message": message, "_embedded": {"errors": list(errors)}}


class ApiError(Exception):
    """Ends an API action with the error response FreeScout would send."""

    def __init__(self, status: int, payload):
        super().__init__(status, payload)
        self.status = status
        self.payload = payload


def param_error(message: str, path: str) -> ApiError:
    return ApiError(400, error_body("Error occurred", [{"path": path, "message": message, "source": "JSON"}]))


def not_found() -> ApiError:
    return ApiError(404, error_body("Not Found"))


def server_error() -> ApiError:
    return ApiError(500, {"message": "Server Error"})


def require_params(data: dict, names) -> None:
    """checkRequiredParams(): the first missing key wins; a null value counts as present."""
    for name in names:
        if name not in data:
            raise param_error(f"`{name}` parameter is required", name)


# --------------------------------------------------------------------------------------------
# Domain objects
# --------------------------------------------------------------------------------------------

class User:
    __slots__ = ("id", "first_name", "last_name", "email", "role", "short")

    def __init__(self, user_id, first_name, last_name, email_address, role):
        self.id, self.first_name, self.last_name = user_id, first_name, last_name
        self.email, self.role = email_address, role
        self.short = {"id": user_id, "type": "user", "firstName": first_name, "lastName": last_name,
                      "photoUrl": "", "email": email_address}

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()

    def to_api(self, installed_at: float) -> dict:
        return {"id": self.id, "firstName": self.first_name, "lastName": self.last_name, "email": self.email,
                "role": self.role, "alternateEmails": "", "jobTitle": "", "phone": "", "timezone": "UTC",
                "photoUrl": "", "language": "en", "createdAt": iso_utc(installed_at), "updatedAt": iso_utc(installed_at)}


class Customer:
    __slots__ = ("id", "first_name", "last_name", "email", "short")

    def __init__(self, customer_id, first_name, last_name, email_address):
        self.id, self.first_name, self.last_name, self.email = customer_id, first_name, last_name, email_address
        self.short = {"id": customer_id, "type": "customer", "firstName": first_name, "lastName": last_name,
                      "photoUrl": "", "email": email_address}

    @property
    def full_name(self) -> str:
        """getFullName(true): the e-mail address stands in for a missing name."""
        name = " ".join(part for part in (self.first_name, self.last_name) if part)
        return name or (self.email or "")


class Conversation:
    """One conversation; threads are kept as their (immutable) API objects, oldest first."""

    __slots__ = ("id", "type", "status", "state", "subject", "preview", "mailbox_id", "assignee_id",
                 "created_by", "source_via", "created_ts", "updated_ts", "closed_by_id", "closed_ts",
                 "user_updated_ts", "last_reply_ts", "last_reply_from", "cc", "bcc", "customer",
                 "custom_values", "tags", "threads", "threads_count")

    def __init__(self, conversation_id, mailbox_id, customer, now):
        self.id = conversation_id
        self.type, self.status, self.state = "email", "active", "published"
        self.subject, self.preview = "", ""
        self.mailbox_id, self.assignee_id = mailbox_id, None
        self.created_by, self.source_via = customer, "customer"
        self.created_ts = self.updated_ts = now
        self.closed_by_id = self.closed_ts = self.user_updated_ts = self.last_reply_ts = None
        self.last_reply_from = ""
        self.cc, self.bcc = [], []
        self.customer = customer
        self.custom_values, self.tags, self.threads = {}, [], []
        self.threads_count = 0

    @property
    def folder(self) -> str:
        """Conversation::updateFolder()."""
        if self.state == "draft":
            return "drafts"
        if self.state == "deleted":
            return "deleted"
        if self.status in ("spam", "closed"):
            return self.status
        return "assigned" if self.assignee_id else "unassigned"

    @property
    def folder_id(self) -> int:
        return (self.mailbox_id - 1) * FOLDERS_PER_MAILBOX + FOLDER_SLOTS[self.folder]

    def waiting_since(self):
        """Folder::getWaitingSinceField(), falling back to updated_at like getWaitingSince()."""
        folder = self.folder
        moment = (self.closed_ts if folder == "closed" else
                  self.user_updated_ts if folder == "deleted" else
                  self.updated_ts if folder == "drafts" else self.last_reply_ts)
        return self.updated_ts if moment is None else moment


# --------------------------------------------------------------------------------------------
# Helpdesk: the in-memory FreeScout and the module's controller logic
# --------------------------------------------------------------------------------------------

class Helpdesk:
    """FreeScout's data and the API's actions on it. Callers hold Simulator.lock.

    Actions queue webhook events; the simulator publishes them when the action ends, so a
    payload shows the state after the whole request, as FreeScout's queued jobs would see it.
    """

    def __init__(self, installed_at: float):
        self.installed_at = installed_at
        self.users = {row[0]: User(*row) for row in USERS}
        self.mailboxes = {mailbox_id: (name, address) for mailbox_id, name, address in MAILBOXES}
        self.clear()

    def clear(self) -> None:
        """Forget conversations and customers; users, mailboxes and field definitions stay."""
        self.tags_module = True
        self.custom_fields_module = True
        self.conversations = {}
        self.customers = {}
        self._customers_by_email = {}
        self._customers_by_phone = {}
        self._tag_ids = {}
        # Conversation ids in order of last change, so updatedSince reads only the recent tail.
        self._by_update = collections.OrderedDict()
        self._ids_by_marker = collections.defaultdict(set)
        self.markers_created = collections.Counter()
        self.conversations_created = 0
        self._ids = {"conversation": itertools.count(1), "thread": itertools.count(1),
                     "customer": itertools.count(1), "tag": itertools.count(1)}
        self._clock = 0.0
        self._events = []

    # ---- bookkeeping -------------------------------------------------------------------------

    def _now(self) -> float:
        # Strictly increasing, so the order of _by_update is also the order of updated_ts.
        self._clock = max(time.time(), self._clock + 1e-6)
        return self._clock

    def _touch(self, conv: Conversation, now=None) -> None:
        conv.updated_ts = self._now() if now is None else now
        self._by_update[conv.id] = True
        self._by_update.move_to_end(conv.id)

    def _index_subject(self, conv: Conversation, add: bool) -> None:
        for marker in subject_markers(conv.subject):
            ids = self._ids_by_marker[marker]
            if add:
                ids.add(conv.id)
            else:
                ids.discard(conv.id)

    def _emit(self, event: str, conv: Conversation, after_undo: bool = False) -> None:
        """Queues a webhook event; `after_undo` ones wait for FreeScout's undo window."""
        self._events.append((event, conv, after_undo))

    def take_events(self) -> list:
        events, self._events = self._events, []
        return events

    def find_user(self, value):
        return self.users.get(to_int(value))

    def conversation(self, value) -> Conversation:
        conv = self.conversations.get(to_int(value))
        if conv is None:
            raise not_found()
        return conv

    def user_short(self, user_id):
        user = self.users.get(user_id)
        return user.short if user else None

    # ---- formatting (ApiWebhooksServiceProvider::formatEntity) ----------------------------------

    def format_conversation(self, conv: Conversation, with_threads: bool = True, with_tags: bool = False) -> dict:
        """The conversation object of the API and of webhooks. Shares only immutable parts."""
        closed = conv.status == "closed"
        closed_by = self.users.get(conv.closed_by_id) if closed else None
        embedded = {"threads": conv.threads[::-1] if with_threads else []}
        if with_tags:
            embedded["tags"] = [{"id": self._tag_ids[name], "name": name} for name in conv.tags]
        result = {
            "id": conv.id, "number": conv.id, "threadsCount": conv.threads_count, "type": conv.type,
            "folderId": conv.folder_id, "status": conv.status, "state": conv.state, "subject": conv.subject,
            "preview": conv.preview, "mailboxId": conv.mailbox_id, "assignee": self.user_short(conv.assignee_id),
            "createdBy": conv.created_by.short,
            "createdAt": iso_utc(conv.created_ts), "updatedAt": iso_utc(conv.updated_ts),
            "closedBy": conv.closed_by_id if closed else None,
            "closedByUser": closed_by.short if closed_by else None,
            "closedAt": iso_utc(conv.closed_ts), "userUpdatedAt": iso_utc(conv.user_updated_ts),
            "customerWaitingSince": {
                "time": iso_utc(conv.last_reply_ts),
                "friendly": friendly_age(time.time() - conv.waiting_since()),
                "latestReplyFrom": conv.last_reply_from,
            },
            "source": {"type": "api", "via": conv.source_via},
            "cc": list(conv.cc), "bcc": list(conv.bcc), "customer": conv.customer.short,
            "_embedded": embedded,
        }
        fields = CUSTOM_FIELDS.get(conv.mailbox_id) if self.custom_fields_module else None
        if fields:  # formatEntity appends the key after _embedded, and only when there are fields
            result["customFields"] = [
                {"id": field_id, "name": name, "value": php_string(conv.custom_values.get(field_id)), "text": ""}
                for field_id, name, _ in fields]
        return result

    # ---- customers ----------------------------------------------------------------------------

    def resolve_customer(self, spec) -> Customer:
        """Looks a customer up by id, e-mail or phone, or creates one (createCustomer)."""
        if isinstance(spec, list) and spec and not php_empty(spec[0]):
            spec = spec[0]  # the module's "fix for Zapier"
        if not isinstance(spec, dict):
            spec = {}
        if not php_empty(spec.get("id")):
            customer = self.customers.get(to_int(spec["id"]))
            if customer is None:
                raise param_error(f"Customer with the following ID not found: {php_string(spec['id'])}", "customer")
            return customer
        if not php_empty(spec.get("email")):
            customer = self._customers_by_email.get(str(spec["email"]).lower())
            if customer:
                return customer
        if not php_empty(spec.get("phone")):
            customer = self._customers_by_phone.get(str(spec["phone"]))
            if customer:
                return customer
        return self._create_customer(spec)

    def _create_customer(self, spec: dict) -> Customer:
        emails = [spec["email"]] if not php_empty(spec.get("email")) else []
        extra = spec.get("emails")
        if isinstance(extra, list):
            emails += [item["value"] for item in extra if isinstance(item, dict) and not php_empty(item.get("value"))]
        for address in emails:
            if not isinstance(address, str) or not EMAIL_RE.fullmatch(address):
                raise param_error(f"Invalid email: {php_string(address)}", "emails")
        if php_empty(spec.get("firstName")) and not emails:
            raise param_error("Customer first name or email is required.", "customer.first_name")
        emails = [address.lower() for address in emails]
        customer = Customer(next(self._ids["customer"]), spec.get("firstName"), spec.get("lastName"),
                            emails[0] if emails else None)
        self.customers[customer.id] = customer
        for address in emails:
            self._customers_by_email.setdefault(address, customer)
        if not php_empty(spec.get("phone")):
            self._customers_by_phone.setdefault(str(spec["phone"]), customer)
        return customer

    # ---- threads ------------------------------------------------------------------------------

    def _append_thread(self, conv: Conversation, kind: str, author, at: float, *, body=None, customer=None,
                       source_type="api", status="active", first=False, to=(), cc=(), bcc=(),
                       action_type="", action_text=None) -> dict:
        """Stores a thread and applies what FreeScout's ThreadObserver does to the conversation."""
        via = "customer" if kind == "customer" else "user"
        if action_text is None:
            if first:
                did = f"started a new conversation #{conv.id}"
            elif kind == "note":
                did = f"added a note to conversation #{conv.id}"
            else:
                did = f"replied to conversation #{conv.id}"
            action_text = f"{author.full_name} {did}"
        thread = {
            "id": next(self._ids["thread"]), "type": kind, "status": status, "state": "published",
            "action": {"type": action_type, "text": action_text, "associatedEntities": []},
            "body": body, "source": {"type": source_type, "via": via},
            "customer": (customer or conv.customer).short, "createdBy": author.short,
            "assignedTo": self.user_short(conv.assignee_id),
            "to": list(to), "cc": list(cc), "bcc": list(bcc),
            "createdAt": iso_utc(at), "openedAt": None, "_embedded": {"attachments": []},
        }
        if kind in ("customer", "message"):
            conv.threads_count += 1
            conv.last_reply_ts, conv.last_reply_from = at, via
        if kind != "customer":
            conv.user_updated_ts = at
        if kind in THREAD_TYPES:
            conv.preview = text_preview(body)
        conv.threads.append(thread)
        self._touch(conv)
        return thread

    def _add_lineitem(self, conv: Conversation, by_user, action_type: str, text: str,
                      status="nochange", body=None) -> None:
        person = by_user.full_name if by_user else ""
        self._append_thread(conv, "lineitem", by_user or self.users[1], self._now(), body=body,
                            source_type="web", status=status, action_type=action_type,
                            action_text=f"{person} {text}".strip())

    def create_thread(self, conv: Conversation, data: dict, internal: bool = False) -> dict:
        """POST /api/conversations/{id}/threads (createThread); `internal` when called by create."""
        require_params(data, ("text", "type"))
        kind = data["type"] if data["type"] in THREAD_TYPES else "customer"
        status = thread_status(data["status"]) if "status" in data else None
        if status == "nochange":
            status = None  # a conversation has no "nochange" status; FreeScout would show it as active
        customer = self.resolve_customer(data["customer"]) if not php_empty(data.get("customer")) else conv.customer
        user = None
        if kind != "customer":
            user = None if php_empty(data.get("user")) else self.find_user(data["user"])
            if user is None:
                raise param_error("`user` parameter is required", "user")
        new = conv.threads_count == 0
        imported = not php_empty(data.get("imported"))
        at = parse_api_date(data["createdAt"]) if imported and not php_empty(data.get("createdAt")) else self._now()
        cc, bcc = email_list(data.get("cc")), email_list(data.get("bcc"))
        author = customer if kind == "customer" else user
        prev_status = conv.status

        thread = self._append_thread(
            conv, kind, author, at, body=data["text"], customer=customer, first=new,
            to=[customer.email] if kind != "customer" and customer.email else [], cc=cc, bcc=bcc)
        if new:
            conv.created_by, conv.source_via = author, thread["source"]["via"]
        conv.cc = cc
        if bcc:  # BCC keeps the first e-mail's list unless new addresses are given
            conv.bcc = bcc

        if kind == "customer":
            conv.last_reply_ts, conv.last_reply_from = at, "customer"
            conv.status = status or "active"
            if conv.state == "deleted":
                conv.state = "published"
        elif kind == "message":
            conv.last_reply_ts, conv.last_reply_from, conv.user_updated_ts = at, "user", at
            conv.status = status or "pending"
        elif status and status != conv.status:
            conv.status, conv.user_updated_ts = status, at
        if not internal and kind == "message" and status:
            changed = prev_status != conv.status
            if (changed or new) and conv.status == "closed":
                conv.closed_by_id, conv.closed_ts = user.id, at
            if changed and not new:
                self._emit("convo.status", conv)  # v1.0.87 also reports a status changed by a reply
        conv.customer = customer

        if new:
            self._emit("convo.created", conv, after_undo=kind != "customer")
        elif kind == "note":
            self._emit("convo.note.created", conv)
        elif kind == "customer":
            self._emit("convo.customer.reply.created", conv)
        else:
            self._emit("convo.agent.reply.created", conv, after_undo=True)
        return thread

    # ---- conversations ------------------------------------------------------------------------

    def create_conversation(self, data: dict) -> Conversation:
        """POST /api/conversations (createConversation)."""
        require_params(data, ("subject", "type", "mailboxId", "customer", "threads"))
        threads = data["threads"]
        if isinstance(threads, dict):
            threads = list(threads.values())  # a PHP array may have keys; only the values count
        if not isinstance(threads, list) or not all(isinstance(item, dict) for item in threads):
            raise param_error("'threads' parameter must be an array", "threads")
        customer = self.resolve_customer(data["customer"])
        mailbox_id = to_int(data["mailboxId"])
        if mailbox_id not in self.mailboxes:
            raise param_error("Mailbox not found", "mailboxId")

        conv = Conversation(next(self._ids["conversation"]), mailbox_id, customer, self._now())
        conv.type = data["type"] if data["type"] in CONVERSATION_TYPES else "email"
        conv.subject = php_string(data["subject"])
        status = conversation_status(data["status"]) if "status" in data else None
        conv.status = status or "active"
        if "state" in data:
            conv.state = data["state"] if data["state"] in CONVERSATION_STATES else "published"
        imported = not php_empty(data.get("imported"))
        if not php_empty(data.get("createdAt")):
            conv.created_ts = parse_api_date(data["createdAt"])
        if imported and not php_empty(data.get("closedAt")):
            conv.closed_ts = parse_api_date(data["closedAt"])
        if not php_empty(data.get("assignTo")) and self.find_user(data["assignTo"]):
            conv.assignee_id = self.find_user(data["assignTo"]).id  # unknown ids are ignored silently
        self.conversations[conv.id] = conv
        self._touch(conv)

        created, last_error = False, None
        for item in reversed(threads):  # the request lists threads newest first
            item = dict(item)
            if imported:
                item["imported"] = True
            if status:
                item["status"] = status
            try:
                self.create_thread(conv, item, internal=True)
                created = True
            except ApiError as error:
                last_error = error
        if not created:
            del self.conversations[conv.id]
            del self._by_update[conv.id]
            raise last_error or param_error("Could no create thread(s)", "threads")
        conv.customer = customer  # a thread's own customer must not replace the conversation's

        if self.custom_fields_module:
            self._set_custom_fields(conv, data.get("customFields"))
        self._index_subject(conv, add=True)
        self.markers_created.update(subject_markers(conv.subject))
        self.conversations_created += 1
        return conv

    @staticmethod
    def _set_custom_fields(conv: Conversation, items) -> None:
        # Only [{"id":..,"value":..}] works; an object such as {"alert_id": 1} is skipped item by item.
        values = items.values() if isinstance(items, dict) else items if isinstance(items, list) else ()
        for item in values:
            field_id = to_int(item.get("id")) if isinstance(item, dict) else None
            if field_id is not None and item.get("value") is not None:
                conv.custom_values[field_id] = item["value"]

    def change_status(self, conv: Conversation, status: str, by_user: User) -> None:
        """Conversation::changeStatus(): lineitem plus convo.status."""
        now = self._now()
        conv.status, conv.user_updated_ts = status, now
        if status == "closed":
            conv.closed_by_id, conv.closed_ts = by_user.id, now
        self._add_lineitem(conv, by_user, "changed-ticket-status",
                           f"marked as {STATUS_LABELS[status]} conversation #{conv.id}", status=status)
        self._emit("convo.status", conv)

    def change_assignee(self, conv: Conversation, assignee, by_user: User) -> None:
        """Conversation::changeUser(): -1 unassigns; the id is not validated."""
        assignee_id = to_int(assignee)
        conv.assignee_id = assignee_id if assignee_id and assignee_id != -1 else None
        conv.user_updated_ts = self._now()
        if conv.assignee_id is None:
            name = "anyone"
        else:
            user = self.users.get(conv.assignee_id)
            name = user.full_name if user else ""
        self._add_lineitem(conv, by_user, "changed-ticket-assignee", f"assigned {name} conversation #{conv.id}")
        if conv.assignee_id is not None:
            self._emit("convo.assigned", conv)

    def update_conversation(self, conv: Conversation, data: dict) -> None:
        """PUT /api/conversations/{id} (updateConversation): keys are applied in the order sent."""
        new_subject, subject_changed = None, False
        for key, value in data.items():
            by_user = None
            if key in ("status", "assignTo", "mailboxId"):
                if php_empty(data.get("byUser")):
                    raise param_error("byUser parameter is required.", "byUser")
                by_user = self.find_user(data["byUser"])
                if by_user is None:
                    raise param_error("User not found.", "byUser")
            if key == "status":
                status = conversation_status(value)
                if status != conv.status:
                    self.change_status(conv, status, by_user)
            elif key == "assignTo":
                if not self._same_assignee(conv.assignee_id, value):
                    self.change_assignee(conv, value, by_user)
            elif key == "mailboxId":
                self._move(conv, value, by_user)
            elif key == "customerId":
                self._change_customer(conv, value, self.find_user(data.get("byUser")))
            elif key == "subject" and php_string(value) != conv.subject:
                new_subject, subject_changed = php_string(value), True
        if subject_changed:  # saved once at the end, so an error above discards it
            self._index_subject(conv, add=False)
            conv.subject = new_subject
            self._index_subject(conv, add=True)
            self._touch(conv)

    @staticmethod
    def _same_assignee(current, value) -> bool:
        # PHP's loose `!=` between the user_id column and the request value.
        if current is None:
            return php_empty(value) and value != "0"
        return to_int(value) == current

    def _move(self, conv: Conversation, value, by_user: User) -> None:
        mailbox_id = to_int(value)
        if mailbox_id == conv.mailbox_id:
            return
        if mailbox_id not in self.mailboxes:
            raise param_error("Mailbox not found.", "mailboxId")
        conv.mailbox_id = mailbox_id
        self._add_lineitem(conv, by_user, "moved-from-mailbox", "moved conversation from another mailbox", body="")
        self._emit("convo.moved", conv)

    def _change_customer(self, conv: Conversation, value, by_user) -> None:
        customer_id = to_int(value)
        if customer_id == conv.customer.id:
            return
        customer = self.customers.get(customer_id)
        if customer is None:
            raise param_error("Customer not found.", "customerId")
        conv.customer = customer
        self._add_lineitem(conv, by_user, "changed-ticket-customer",
                           f"changed the customer to {customer.full_name} in conversation #{conv.id}")

    def delete_forever(self, conv: Conversation) -> None:
        """DELETE /api/conversations/{id}: gone for good, announced as convo.deleted_forever."""
        self._emit("convo.deleted_forever", conv)
        self._index_subject(conv, add=False)
        del self.conversations[conv.id]
        self._by_update.pop(conv.id, None)

    def soft_delete(self, conv: Conversation, by_user: User) -> None:
        """Deleting in the UI moves the conversation to the Deleted folder (deleteToFolder)."""
        conv.state, conv.user_updated_ts = "deleted", self._now()
        self._add_lineitem(conv, by_user, "deleted-ticket", "deleted")
        self._emit("convo.deleted", conv)

    def set_tags(self, conv: Conversation, data: dict) -> None:
        """PUT /api/conversations/{id}/tags: full replacement; names are trimmed and lowercased."""
        require_params(data, ("tags",))
        if not isinstance(data["tags"], list):
            raise server_error()  # PHP's foreach over a non-array fails
        wanted = [name.strip().lower() for name in map(php_string, data["tags"]) if name.strip()]
        kept = [name for name in conv.tags if name in wanted]
        added = [name for name in dict.fromkeys(wanted) if name not in kept]
        for name in added:
            if name not in self._tag_ids:
                self._tag_ids[name] = next(self._ids["tag"])
        conv.tags = kept + added

    def set_custom_fields(self, conv: Conversation, data: dict) -> None:
        """PUT /api/conversations/{id}/custom_fields."""
        require_params(data, ("customFields",))
        self._set_custom_fields(conv, data["customFields"])

    # ---- listing ------------------------------------------------------------------------------

    def list_conversations(self, query: dict) -> dict:
        """GET /api/conversations (listConversations) with its filters, sorting and paging."""
        sort_key = LIST_SORT_KEYS.get(php_string(query.get("sortField")), LIST_SORT_KEYS["createdAt"])
        descending = query.get("sortOrder") != "asc"
        checks = self._list_filters(query)
        matches = [conv for conv in self._list_candidates(query) if all(check(conv) for check in checks)]
        matches.sort(key=sort_key, reverse=descending)
        embeds = parse_embed(query.get("embed")) or ()
        with_threads, with_tags = "threads" in embeds, "tags" in embeds and self.tags_module
        return paginate(matches, query, "conversations",
                        lambda conv: self.format_conversation(conv, with_threads, with_tags))

    def _list_candidates(self, query: dict):
        """The smallest set sure to hold every match: by number, subject marker or update time."""
        if not php_empty(query.get("number")):
            conv = self.conversations.get(to_int(query["number"]))
            return [conv] if conv else []
        markers = subject_markers(query.get("subject"))
        if markers:
            return [self.conversations[conv_id] for conv_id in self._ids_by_marker.get(markers[0], ())]
        if not php_empty(query.get("updatedSince")):
            since = parse_api_date(query["updatedSince"])
            recent = []
            for conv_id in reversed(self._by_update):
                conv = self.conversations[conv_id]
                if int(conv.updated_ts) < since:
                    break
                recent.append(conv)
            return recent
        return list(self.conversations.values())

    def _list_filters(self, query: dict) -> list:
        checks = []
        if not php_empty(query.get("mailboxId")):
            mailbox_ids = {to_int(part.strip()) for part in php_string(query["mailboxId"]).split(",")}
            checks.append(lambda conv: conv.mailbox_id in mailbox_ids)
        if not php_empty(query.get("customerEmail")):
            address = php_string(query["customerEmail"]).lower()
            checks.append(lambda conv: conv.customer.email == address)
        if not php_empty(query.get("customerId")):
            customer_id = to_int(query["customerId"])
            checks.append(lambda conv: conv.customer.id == customer_id)
        if not php_empty(query.get("folderId")):
            folder_id = to_int(query["folderId"])
            checks.append(lambda conv: conv.folder_id == folder_id)
        if not php_empty(query.get("status")):
            # One value must match exactly; in a comma list values are trimmed and unknown ones dropped.
            parts = php_string(query["status"]).split(",")
            statuses = {part.strip() if len(parts) > 1 else part for part in parts} & set(CONVERSATION_STATUSES)
            if statuses:
                checks.append(lambda conv: conv.status in statuses)
        if query.get("state") in CONVERSATION_STATES:
            state = query["state"]
            checks.append(lambda conv: conv.state == state)
        if query.get("type") in CONVERSATION_TYPES:
            conv_type = query["type"]
            checks.append(lambda conv: conv.type == conv_type)
        if "assignedTo" in query:  # an empty value (null after Laravel's middleware) means unassigned
            wanted = None if query["assignedTo"] is None else to_int(query["assignedTo"])
            if query["assignedTo"] is not None and wanted is None:
                checks.append(lambda conv: False)  # `user_id = 'abc'` matches nothing
            else:
                checks.append(lambda conv: conv.assignee_id == wanted)
        for key, attribute in (("updatedSince", "updated_ts"), ("createdSince", "created_ts")):
            if not php_empty(query.get(key)):
                since = parse_api_date(query[key])
                checks.append(lambda conv, attribute=attribute, since=since: int(getattr(conv, attribute)) >= since)
        if not php_empty(query.get("number")):
            number = to_int(query["number"])
            checks.append(lambda conv: conv.id == number)
        if not php_empty(query.get("subject")):
            matches_subject = like_matcher(php_string(query["subject"]))
            checks.append(lambda conv: matches_subject(conv.subject) is not None)
        if not php_empty(query.get("tag")) and self.tags_module:
            tag = php_string(query["tag"]).strip().lower()
            checks.append(lambda conv: tag in conv.tags)
        return checks

    # ---- analyst actions (control API) ----------------------------------------------------------

    def ui_action(self, data: dict) -> dict:
        """What an analyst does in the FreeScout UI, with the same side effects and webhooks.

        Raises LookupError for an unknown conversation and ValueError for a bad request.
        """
        conv = self.conversations.get(to_int(data.get("conversation")))
        if conv is None:
            raise LookupError(f"conversation {data.get('conversation')!r} not found")
        action = data.get("action")
        if action == "assign":
            if to_int(data.get("user")) is None:
                raise ValueError("assign needs \"user\": a user id, or -1 to unassign")
            actor = self.find_user(data.get("by")) or self.find_user(data["user"]) or self.users[1]
            self.change_assignee(conv, data["user"], actor)
            return {}
        if action == "customer_reply":
            return {"thread_id": self._ui_customer_reply(conv, self._ui_text(data))}
        actor = self.find_user(data.get("user", 1))
        if actor is None:
            raise ValueError(f"user {data.get('user')!r} not found")
        if action == "status":
            status = data.get("status")
            if status not in CONVERSATION_STATUSES:
                raise ValueError(f"status must be one of {', '.join(CONVERSATION_STATUSES)}")
            if status != conv.status:
                self.change_status(conv, status, actor)
            return {}
        if action == "note":
            thread = self._append_thread(conv, "note", actor, self._now(), body=self._ui_text(data),
                                         source_type="web", status=conv.status, to=self._ui_recipients(conv))
            self._emit("convo.note.created", conv)
            return {"thread_id": thread["id"]}
        if action == "agent_reply":
            return {"thread_id": self._ui_agent_reply(conv, actor, self._ui_text(data), data.get("status", "pending"))}
        if action == "delete":
            self.soft_delete(conv, actor)
            return {}
        raise ValueError("action must be assign, status, note, customer_reply, agent_reply or delete")

    @staticmethod
    def _ui_text(data: dict) -> str:
        text = data.get("text")
        if not isinstance(text, str) or not text:
            raise ValueError("\"text\" is required")
        return text

    @staticmethod
    def _ui_recipients(conv: Conversation) -> list:
        return [conv.customer.email] if conv.customer.email else []

    def _ui_customer_reply(self, conv: Conversation, text: str) -> int:
        """A customer's e-mail reply: re-opens and un-deletes the conversation."""
        conv.status = "active"
        if conv.state == "deleted":
            conv.state = "published"
        thread = self._append_thread(conv, "customer", conv.customer, self._now(), body=text,
                                     source_type="email", status="active")
        self._emit("convo.customer.reply.created", conv)
        return thread["id"]

    def _ui_agent_reply(self, conv: Conversation, actor: User, text: str, status) -> int:
        """A reply from the UI; its status selector defaults to pending."""
        if status not in CONVERSATION_STATUSES:
            raise ValueError(f"status must be one of {', '.join(CONVERSATION_STATUSES)}")
        changed = status != conv.status
        now = self._now()
        conv.status = status
        if changed and status == "closed":
            conv.closed_by_id, conv.closed_ts = actor.id, now
        thread = self._append_thread(conv, "message", actor, now, body=text, source_type="web",
                                     status=status, to=self._ui_recipients(conv))
        if changed:
            self._emit("convo.status", conv)
        self._emit("convo.agent.reply.created", conv, after_undo=True)
        return thread["id"]

    def summary(self, conv: Conversation) -> dict:
        """One line of GET /_sim/conversations."""
        return {"id": conv.id, "subject": conv.subject, "status": conv.status, "state": conv.state,
                "mailboxId": conv.mailbox_id, "assignee": conv.assignee_id, "customerEmail": conv.customer.email,
                "tags": list(conv.tags), "customFields": {str(key): value for key, value in conv.custom_values.items()},
                "threads": len(conv.threads), "createdAt": iso_utc(conv.created_ts),
                "updatedAt": iso_utc(conv.updated_ts)}


# sortField -> key; ties fall back to the id in the same direction. Dates compare by whole second.
LIST_SORT_KEYS = {
    "createdAt": lambda conv: (int(conv.created_ts), conv.id),
    "mailboxId": lambda conv: (conv.mailbox_id, conv.id),
    "number": lambda conv: (conv.id,),
    "subject": lambda conv: (conv.subject.lower(), conv.id),
    "updatedAt": lambda conv: (int(conv.updated_ts), conv.id),
    "waitingSince": lambda conv: (-1 if conv.last_reply_ts is None else int(conv.last_reply_ts), conv.id),
}


def parse_embed(value):
    """The `embed` parameter as a list, or None when it is absent or empty."""
    return None if php_empty(value) else php_string(value).split(",")


def paginate(items: list, query: dict, plural: str, to_api) -> dict:
    """Laravel's paginate() plus the module's addPageDataToResponse()."""
    per_page = positive_int(query.get("pageSize")) or PAGE_SIZE
    page = positive_int(query.get("page")) or 1
    chunk = items[(page - 1) * per_page: page * per_page]
    return {"_embedded": {plural: [to_api(item) for item in chunk]},
            "page": {"size": per_page, "totalElements": len(items),
                     "totalPages": max(1, -(-len(items) // per_page)), "number": page}}


# --------------------------------------------------------------------------------------------
# Webhooks
# --------------------------------------------------------------------------------------------

class Scheduler(threading.Thread):
    """Runs callables at given monotonic times, one at a time, on a single daemon thread."""

    def __init__(self):
        super().__init__(name="webhook-sender", daemon=True)
        self._heap = []
        self._order = itertools.count()
        self._wakeup = threading.Condition()

    def call_at(self, due: float, function) -> None:
        with self._wakeup:
            heapq.heappush(self._heap, (due, next(self._order), function))
            self._wakeup.notify()

    def run(self) -> None:
        while True:
            with self._wakeup:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._wakeup.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                _, _, function = heapq.heappop(self._heap)
            try:
                function()
            except Exception:  # a bug in one job must not stop all later deliveries
                traceback.print_exc()


class Webhooks:
    """Generates FreeScout webhook requests for helpdesk events and delivers them in the background.

    Every event yields a record (kept even without a target URL, so SQL tests can replay it).
    Targets are the configured URL (all events) plus webhooks registered through the API.
    Failed deliveries are retried with the original body, like the module's webhook log.
    """

    def __init__(self, sim):
        self._sim = sim
        self._epoch = 0
        self._scheduler = Scheduler()
        self._scheduler.start()
        self.clear()

    def clear(self) -> None:
        """Forgets records and registrations; pending deliveries of the old epoch are dropped."""
        self._epoch += 1
        self.records = collections.deque(maxlen=WEBHOOK_LOG_SIZE)
        self.registrations = {}
        self._record_seq = itertools.count(1)
        self._registration_ids = itertools.count(1)

    def publish(self, events) -> None:
        """Called with the lock held at the end of every helpdesk action."""
        undo_delay = self._sim.config.undo_delay
        for event, conv, after_undo in events:
            if after_undo and undo_delay > 0:
                self._scheduler.call_at(time.monotonic() + undo_delay,
                                        functools.partial(self._publish_after_undo, event, conv.id, self._epoch))
            else:
                self._generate(event, conv)

    def _publish_after_undo(self, event: str, conversation_id: int, epoch: int) -> None:
        # Like the queued job, this sees the conversation as it is now, and nothing if it is gone.
        with self._sim.lock:
            conv = self._sim.helpdesk.conversations.get(conversation_id)
            if epoch == self._epoch and conv is not None:
                self._generate(event, conv)

    def _generate(self, event: str, conv: Conversation) -> None:
        config = self._sim.config
        conversation = self._sim.helpdesk.format_conversation(conv)
        if config.webhook_format == "spec":
            body = php_json({"event": SPEC_EVENTS.get(event, SPEC_FALLBACK_EVENT),
                             "data": {"conversation": conversation}, "timestamp": iso_utc(time.time())})
            headers = {"Content-Type": "application/json", "User-Agent": GUZZLE_USER_AGENT}
        else:
            body = php_json(conversation)
            headers = {"Content-Type": "application/json", "User-Agent": GUZZLE_USER_AGENT,
                       "X-FreeScout-Event": event}
        headers["X-FreeScout-Signature"] = sign_webhook(config.webhook_format, config.webhook_secret, body.encode())
        record = {"seq": next(self._record_seq), "t": time.time(), "event": event, "conversation_id": conv.id,
                  "format": config.webhook_format, "headers": headers, "body": body, "deliveries": []}
        self.records.append(record)
        targets = [config.webhook_url] if config.webhook_url else []
        targets += [hook["url"] for hook in self.registrations.values() if event in hook["event_names"]]
        for url in targets:
            self._scheduler.call_at(time.monotonic(), functools.partial(self._deliver, record, url, 1, self._epoch))

    def _deliver(self, record: dict, url: str, attempt: int, epoch: int) -> None:
        with self._sim.lock:
            if epoch != self._epoch:
                return
            secret = self._sim.config.webhook_secret
        body = record["body"].encode()
        # The module signs again for every attempt, with the key it has then.
        headers = dict(record["headers"], **{"X-FreeScout-Signature": sign_webhook(record["format"], secret, body)})
        status, error = self._post(url, body, headers)
        ok = 200 <= status <= 299
        with self._sim.lock:
            if epoch != self._epoch:
                return
            record["deliveries"].append({"t": time.time(), "url": url, "attempt": attempt,
                                         "status": status, "ok": ok, "error": error})
        if not ok and attempt < WEBHOOK_MAX_ATTEMPTS:
            self._scheduler.call_at(time.monotonic() + WEBHOOK_RETRY_DELAYS_S[attempt - 1],
                                    functools.partial(self._deliver, record, url, attempt + 1, epoch))

    @staticmethod
    def _post(url: str, body: bytes, headers: dict):
        """One delivery attempt: (status, error). http.client keeps the header names' case,
        which urllib would change; redirects are not followed."""
        try:
            parts = urllib.parse.urlsplit(url)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            connection = connection_class(parts.hostname, parts.port, timeout=WEBHOOK_TIMEOUT_S)
            try:
                connection.request("POST", target, body=body, headers=headers)
                status = connection.getresponse().status
            finally:
                connection.close()
        except Exception as error:  # like Guzzle: any transport failure is a failed delivery
            return 0, f"{type(error).__name__}: {error}"
        return status, None if 200 <= status <= 299 else f"Response status code: {status}"

    def register(self, data: dict) -> dict:
        """POST /api/webhooks (Webhook::create): unknown events are dropped; none left is a 400."""
        require_params(data, ("url", "events"))
        events = data["events"]
        if isinstance(events, str):
            events = events.split(",")
        if php_empty(data["url"]) or not isinstance(events, (list, dict)):
            raise ApiError(400, error_body("Error occurred"))
        pairs = events.items() if isinstance(events, dict) else enumerate(events)
        kept = {key: name for key, name in pairs if name in WEBHOOK_EVENTS}
        if not kept:
            raise ApiError(400, error_body("Error occurred"))
        # PHP's unset() leaves holes in the keys, and json_encode then writes an object.
        sequential = list(kept) == list(range(len(kept)))
        hook = {"id": next(self._registration_ids), "url": data["url"],
                "events": list(kept.values()) if sequential else {str(key): name for key, name in kept.items()},
                "event_names": set(kept.values())}
        self.registrations[hook["id"]] = hook
        return {"id": hook["id"], "url": hook["url"], "events": hook["events"], "lastRunTime": None, "lastRunError": ""}

    def unregister(self, webhook_id) -> None:
        if self.registrations.pop(to_int(webhook_id), None) is None:
            raise not_found()

    def since(self, seq: int) -> list:
        """Records after `seq`, copied so they can be encoded without the lock."""
        found = []
        for record in reversed(self.records):
            if record["seq"] <= seq:
                break
            found.append(dict(record, headers=dict(record["headers"]), deliveries=list(record["deliveries"])))
        found.reverse()
        return found


def sign_webhook(webhook_format: str, secret: str, body: bytes) -> str:
    return spec_signature(secret, body) if webhook_format == "spec" else real_signature(secret, body)


# --------------------------------------------------------------------------------------------
# Faults and the API listener
# --------------------------------------------------------------------------------------------

FAULT_MODES = ("none", "refuse", "status", "timeout", "reset", "drop_after_commit")


class Fault:
    """One queued fault. It lasts `count` matching requests, `duration_s` seconds, or until replaced."""

    __slots__ = ("mode", "status", "retry_after", "remaining", "duration_s", "pattern", "timer")

    def __init__(self, spec: dict):
        if not isinstance(spec, dict):
            raise ValueError("a fault must be a JSON object")
        self.mode = spec.get("mode", "none")
        if self.mode not in FAULT_MODES:
            raise ValueError(f"mode must be one of {', '.join(FAULT_MODES)}")
        self.status = to_int(spec.get("status") or 503)
        if self.status is None or not 100 <= self.status <= 599:
            raise ValueError("status must be an HTTP status code")
        self.retry_after = None if spec.get("retry_after") is None else str(spec["retry_after"])
        self.remaining = None if spec.get("count") is None else positive_int(spec["count"])
        if spec.get("count") is not None and self.remaining is None:
            raise ValueError("count must be a positive integer")
        duration = spec.get("duration_s")
        if duration is not None and (not isinstance(duration, (int, float)) or isinstance(duration, bool)
                                     or duration <= 0):
            raise ValueError("duration_s must be a positive number")
        self.duration_s = duration
        try:
            self.pattern = re.compile(spec.get("path_regex") or "")
        except re.error as error:
            raise ValueError(f"path_regex: {error}") from None
        self.timer = None

    def describe(self) -> dict:
        return {"mode": self.mode, "status": self.status, "retry_after": self.retry_after, "count": self.remaining,
                "duration_s": self.duration_s, "path_regex": self.pattern.pattern}

    def response(self) -> Response:
        headers = (("Retry-After", self.retry_after),) if self.retry_after and self.status in (429, 503) else ()
        return Response(self.status, json.dumps({"message": status_phrase(self.status)}).encode(), headers)


class Faults:
    """The fault queue. Only its head is active; it advances when the head's count or time runs out."""

    def __init__(self, listener):
        self._listener = listener
        self._lock = threading.Lock()
        self._queue = collections.deque()
        self._release = threading.Event()

    def configure(self, faults: list) -> None:
        """Replaces the queue; requests held by "timeout" faults are let go."""
        with self._lock:
            for fault in self._queue:
                if fault.timer:
                    fault.timer.cancel()
            self._release.set()
            self._release = threading.Event()
            self._queue = collections.deque(fault for fault in faults if fault.mode != "none")
            self._activate_head()

    def describe(self) -> list:
        with self._lock:
            return [fault.describe() for fault in self._queue]

    def take(self, request_line: str):
        """The fault for an API request ("METHOD /path"), with the event that ends a hang."""
        with self._lock:
            head = self._queue[0] if self._queue else None
            if head is None or head.mode == "refuse" or not head.pattern.search(request_line):
                return None, None
            if head.remaining is not None:
                head.remaining -= 1
                if head.remaining == 0:
                    self._advance()
            return head, self._release

    def _advance(self) -> None:
        head = self._queue.popleft()
        if head.timer:
            head.timer.cancel()
        self._activate_head()

    def _activate_head(self) -> None:
        head = self._queue[0] if self._queue else None
        if head and head.duration_s and head.timer is None:
            head.timer = threading.Timer(head.duration_s, self._expire, (head,))
            head.timer.daemon = True
            head.timer.start()
        if head and head.mode == "refuse":
            self._listener.close()
        else:
            self._listener.open()

    def _expire(self, fault: Fault) -> None:
        with self._lock:
            if self._queue and self._queue[0] is fault:
                self._advance()


class SimServer(ThreadingHTTPServer):
    """A thread per connection; keeps a reference to the simulator for its handlers."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address, handler, sim):
        self.sim = sim
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind() looks the host name up (getfqdn), which can stall on DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class ApiServer(SimServer):
    """Tracks its connections so that "refuse" can cut the keep-alive ones too."""

    def __init__(self, address, handler, sim):
        self._connections = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler, sim)

    def process_request(self, request, client_address) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class ApiListener:
    """The API's listening socket, which the "refuse" fault closes and reopens on the same port."""

    def __init__(self, host: str, port: int, sim):
        self._address = (host, port)
        self._sim = sim
        self._server = None
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        return self._address[1]

    def open(self) -> None:
        with self._lock:
            if self._server is not None:
                return
            self._server = ApiServer(self._address, ApiHandler, self._sim)
            self._address = self._server.server_address[:2]  # keep the port picked for --port 0
            threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                             name="api-listener", daemon=True).start()

    def close(self) -> None:
        with self._lock:
            if self._server is None:
                return
            self._server.shutdown()
            self._server.server_close()
            self._server.drop_connections()
            self._server = None


# --------------------------------------------------------------------------------------------
# HTTP handlers
# --------------------------------------------------------------------------------------------

class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler that writes each response with a single send."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = IDLE_CONNECTION_TIMEOUT_S

    def log_message(self, format, *args) -> None:  # noqa: A002 - signature fixed by the base class
        """Per-request logging would dominate the benchmark, so there is none."""

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = to_int(self.headers.get("Content-Length") or 0)
        if length is None or length < 0:
            self.close_connection = True  # the stream position is unknown now
            return b""
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes:
        chunks = []
        while True:
            size = int(self.rfile.readline(65537).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # skip trailers
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(65537)

    def write_response(self, response: Response) -> None:
        lines = [f"HTTP/1.1 {response.status} {status_phrase(response.status)}",
                 f"Date: {email.utils.formatdate(usegmt=True)}",
                 "Cache-Control: no-cache, private",
                 f"Content-Length: {len(response.body)}"]
        if response.content_type:
            lines.append(f"Content-Type: {response.content_type}")
        lines += [f"{name}: {value}" for name, value in response.headers]
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        with contextlib.suppress(OSError):  # the client (or "refuse") may have gone already
            self.wfile.write(head if self.command == "HEAD" else head + response.body)


class ApiHandler(QuietHandler):
    """The FreeScout API port: request accounting, faults, then FreeScoutApi."""

    def setup(self) -> None:
        super().setup()
        self._reset_on_finish = False

    def finish(self) -> None:
        if not self._reset_on_finish:
            super().finish()
            return
        # Closing the file objects first makes close() real, and linger 0 turns it into a RST.
        self.rfile.close()
        self.wfile.close()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def handle_api_request(self) -> None:
        sim = self.server.sim
        arrived = time.time()
        body = self.read_body()
        path = self.path.split("?", 1)[0]
        route, params = sim.api.match(path)
        label = f"{self.command} {route.template if route else '(no route)'}"
        sim.request_started()
        response, fault_mode = None, None
        try:
            response, fault_mode = self._respond(sim, f"{self.command} {path}", route, params, body)
        finally:
            # Logged before answering, so a client that got its answer also finds the log entry.
            sim.request_finished(label, {
                "t": arrived, "method": self.command, "path": self.path,
                "status": response.status if response is not None else None, "fault": fault_mode,
                "headers": {name: "***" if name.lower() == "x-freescout-api-key" else value
                            for name, value in self.headers.items()},
                "body": body[:LOGGED_BODY_BYTES].decode("utf-8", "replace")})
        if response is not None:
            self.write_response(response)

    def _respond(self, sim, request_line: str, route, params, body: bytes):
        """The response to send (None for none) and the fault mode that applied."""
        if sim.config.latency_ms:
            time.sleep(sim.config.latency_ms / 1000)
        fault, release = sim.faults.take(request_line)
        mode = fault.mode if fault else None
        if mode == "status":
            return fault.response(), mode
        if mode == "timeout":
            release.wait(TIMEOUT_FAULT_S)
            self.close_connection = True
            return None, mode
        if mode != "reset":
            response = sim.api.execute(self.command, route, params, self.path, self.headers, body)
            if mode is None:
                return response, None
        # "reset" drops the request; "drop_after_commit" did the work but loses the answer.
        self._reset_on_finish = self.close_connection = True
        return None, mode

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = handle_api_request


class ControlHandler(QuietHandler):
    """The control port: everything goes to ControlApi, unaccounted and without faults."""

    def handle_control_request(self) -> None:
        self.write_response(self.server.sim.control.handle(self.command, self.path, self.read_body()))

    do_GET = do_POST = handle_control_request


# --------------------------------------------------------------------------------------------
# The API routes
# --------------------------------------------------------------------------------------------

class Route:
    """A Laravel route: a path template with an optional {id} and its actions by HTTP method."""

    def __init__(self, template: str, actions: dict):
        self.template = template
        self.actions = actions
        self.regex = re.compile("^" + re.escape(template).replace(r"\{id\}", "([^/]+)") + "$")


ROUTES = (
    Route("/api/conversations", {"GET": "list_conversations", "POST": "create_conversation"}),
    Route("/api/conversations/{id}", {"GET": "get_conversation", "PUT": "update_conversation",
                                      "DELETE": "delete_conversation"}),
    Route("/api/conversations/{id}/threads", {"POST": "create_thread"}),
    Route("/api/conversations/{id}/tags", {"PUT": "update_tags"}),
    Route("/api/conversations/{id}/custom_fields", {"PUT": "update_custom_fields"}),
    Route("/api/mailboxes", {"GET": "list_mailboxes"}),
    Route("/api/mailboxes/{id}/custom_fields", {"GET": "mailbox_custom_fields"}),
    Route("/api/users", {"GET": "list_users"}),
    Route("/api/users/{id}", {"GET": "get_user"}),
    Route("/api/webhooks", {"POST": "create_webhook"}),
    Route("/api/webhooks/{id}", {"DELETE": "delete_webhook"}),
)
LARAVEL_VERBS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def request_input(query_string: str, headers, body: bytes) -> dict:
    """$request->all(): body keys first, then query keys, after Laravel's input middleware.

    Like Laravel, a body counts as JSON only with a JSON Content-Type, and malformed JSON is
    read as no input at all.
    """
    data = {}
    content_type = headers.get("Content-Type", "")
    if body and ("/json" in content_type or "+json" in content_type):
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        data = parsed if isinstance(parsed, dict) else {}
    elif body and "application/x-www-form-urlencoded" in content_type:
        data = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    data = laravel_input(data)
    for key, value in laravel_input(dict(urllib.parse.parse_qsl(query_string, keep_blank_values=True))).items():
        data.setdefault(key, value)
    return data


class FreeScoutApi:
    """The module's /api routes: routing, authentication (ApiAuth) and controller actions."""

    def __init__(self, sim):
        self._sim = sim

    @staticmethod
    def match(path: str):
        """The route for a path (Laravel ignores a trailing slash) and its parameters."""
        path = path.rstrip("/") or "/"
        for route in ROUTES:
            found = route.regex.match(path)
            if found:
                return route, found.groups()
        return None, ()

    def execute(self, method: str, route, params, target: str, headers, body: bytes) -> Response:
        action = route.actions.get(method) if route else None
        if action is None:
            if method == "OPTIONS" and target.startswith("/api/"):
                action = "options"  # the module's catch-all OPTIONS route
            elif route is None:
                # Real Laravel would likely answer 405 here, because that catch-all matches every
                # /api path; the bridge's tests expect the module's 404 body instead.
                return api_response(404, error_body("Not Found"))
            elif method == "HEAD" and "GET" in route.actions:
                action = "head_not_allowed"
            else:
                return self._method_not_allowed(route)
        data = request_input(target.partition("?")[2], headers, body)
        # ApiAuth: the api_key parameter (query or body) wins over the header.
        key = data.get("api_key") if data.get("api_key") is not None else headers.get("X-FreeScout-API-Key")
        if php_empty(key) or key != self._sim.config.api_key:
            return api_response(401, {"message": "Not Authorized"})
        try:
            return getattr(self, action)(params, data)
        except ApiError as error:
            return api_response(error.status, error.payload)
        except Exception:  # a simulator bug: answer like Laravel and show the traceback
            traceback.print_exc()
            return api_response(500, {"message": "Server Error"})

    @staticmethod
    def _method_not_allowed(route) -> Response:
        # Laravel 5.5 rejects the verb before any middleware runs; its exception has no message.
        # The module's OPTIONS catch-all route makes OPTIONS allowed on every /api path.
        allowed = set(route.actions) | {"OPTIONS"} | ({"HEAD"} if "GET" in route.actions else set())
        allow = ", ".join(verb for verb in LARAVEL_VERBS if verb in allowed)
        return api_response(405, {"message": ""}, (("Allow", allow),))

    @staticmethod
    def head_not_allowed(params, data) -> Response:
        return api_response(405, "Method Not Allowed")  # the module's own check, a bare JSON string

    @staticmethod
    def options(params, data) -> Response:
        return Response(200, content_type="text/html; charset=UTF-8")

    def list_conversations(self, params, data) -> Response:
        with self._sim.transaction() as desk:
            payload = desk.list_conversations(data)
        return api_response(200, payload)

    def create_conversation(self, params, data) -> Response:
        with self._sim.transaction() as desk:
            conv = desk.create_conversation(data)
            payload = desk.format_conversation(conv)
        return api_response(201, payload, (("Resource-ID", str(conv.id)),))

    def get_conversation(self, params, data) -> Response:
        embeds = parse_embed(data.get("embed"))
        with self._sim.transaction() as desk:
            conv = desk.conversation(params[0])
            payload = desk.format_conversation(conv, with_threads=embeds is None or "threads" in embeds,
                                               with_tags=embeds is not None and "tags" in embeds and desk.tags_module)
        return api_response(200, payload)

    def update_conversation(self, params, data) -> Response:
        with self._sim.transaction() as desk:
            desk.update_conversation(desk.conversation(params[0]), data)
        return NO_CONTENT

    def delete_conversation(self, params, data) -> Response:
        with self._sim.transaction() as desk:
            desk.delete_forever(desk.conversation(params[0]))
        return NO_CONTENT

    def create_thread(self, params, data) -> Response:
        with self._sim.transaction() as desk:
            thread = desk.create_thread(desk.conversation(params[0]), data)
        return api_response(201, thread, (("Resource-ID", str(thread["id"])),))

    def update_tags(self, params, data) -> Response:
        with self._sim.transaction() as desk:
            if not desk.tags_module:
                raise ApiError(400, error_body("Tags module is not installed or not activated"))
            desk.set_tags(desk.conversation(params[0]), data)
        return NO_CONTENT

    def update_custom_fields(self, params, data) -> Response:
        with self._sim.transaction() as desk:
            if not desk.custom_fields_module:
                raise ApiError(400, error_body("Custom Fields module is not installed or not activated"))
            desk.set_custom_fields(desk.conversation(params[0]), data)
        return NO_CONTENT

    def list_mailboxes(self, params, data) -> Response:
        installed = iso_utc(self._sim.helpdesk.installed_at)
        mailboxes = [{"id": mailbox_id, "name": name, "email": address, "createdAt": installed, "updatedAt": installed}
                     for mailbox_id, name, address in MAILBOXES]
        return api_response(200, paginate(mailboxes, data, "mailboxes", lambda mailbox: mailbox))

    def mailbox_custom_fields(self, params, data) -> Response:
        desk = self._sim.helpdesk
        mailbox_id = to_int(params[0])
        if mailbox_id not in desk.mailboxes:
            raise not_found()
        if not desk.custom_fields_module:
            raise ApiError(400, error_body("Custom Fields module is not installed or not activated"))
        fields = [{"id": field_id, "name": name, "type": field_type, "options": None, "required": False,
                   "sortOrder": order}
                  for order, (field_id, name, field_type) in enumerate(CUSTOM_FIELDS.get(mailbox_id, ()), 1)]
        return api_response(200, paginate(fields, data, "custom_fields", lambda field: field))

    def list_users(self, params, data) -> Response:
        desk = self._sim.helpdesk
        users = sorted(desk.users.values(), key=lambda user: user.id, reverse=True)
        if not php_empty(data.get("email")):
            wanted = php_string(data["email"]).lower()
            users = [user for user in users if user.email == wanted]
        return api_response(200, paginate(users, data, "users", lambda user: user.to_api(desk.installed_at)))

    def get_user(self, params, data) -> Response:
        desk = self._sim.helpdesk
        user = desk.find_user(params[0])
        if user is None:
            raise not_found()
        return api_response(200, user.to_api(desk.installed_at))

    def create_webhook(self, params, data) -> Response:
        with self._sim.lock:
            hook = self._sim.webhooks.register(data)
        return api_response(201, hook, (("Resource-ID", str(hook["id"])),))

    def delete_webhook(self, params, data) -> Response:
        with self._sim.lock:
            self._sim.webhooks.unregister(params[0])
        return NO_CONTENT


# --------------------------------------------------------------------------------------------
# Control API
# --------------------------------------------------------------------------------------------

def control_response(status: int, payload) -> Response:
    return Response(status, json.dumps(payload).encode())


class ControlApi:
    """The /_sim routes of the control port: observe and steer the simulator (no auth)."""

    def __init__(self, sim):
        self._sim = sim

    def handle(self, method: str, target: str, body: bytes) -> Response:
        path, _, query_string = target.partition("?")
        query = dict(urllib.parse.parse_qsl(query_string))
        try:
            data = json.loads(body) if body.strip() else {}
        except ValueError as error:
            return control_response(400, {"ok": False, "error": f"invalid JSON: {error}"})
        if method == "GET":
            if path == "/_sim/stats":
                return control_response(200, self._sim.stats())
            if path == "/_sim/requests":
                return control_response(200, self._sim.requests_since(to_int(query.get("since")) or 0))
            if path == "/_sim/webhooks":
                with self._sim.lock:
                    records = self._sim.webhooks.since(to_int(query.get("since")) or 0)
                return control_response(200, records)
            if path == "/_sim/conversations":
                with self._sim.lock:
                    desk = self._sim.helpdesk
                    return control_response(200, [desk.summary(conv) for conv in desk.conversations.values()])
            if path.startswith("/_sim/conversations/"):
                return self._conversation(path.rsplit("/", 1)[1])
            if path == "/_sim/config":
                return control_response(200, self._sim.describe_config())
            if path == "/_sim/faults":
                return control_response(200, self._sim.faults.describe())
        elif method == "POST" and isinstance(data, dict):
            if path == "/_sim/reset":
                self._sim.reset()
                return control_response(200, {"ok": True})
            if path == "/_sim/config":
                return self._configure(data)
            if path == "/_sim/faults":
                return self._set_faults(data)
            if path == "/_sim/act":
                return self._act(data)
        elif method == "POST":
            return control_response(400, {"ok": False, "error": "the body must be a JSON object"})
        return control_response(404, {"ok": False, "error": f"no control route {method} {path}"})

    def _conversation(self, conversation_id: str) -> Response:
        with self._sim.lock:
            desk = self._sim.helpdesk
            conv = desk.conversations.get(to_int(conversation_id))
            payload = desk.format_conversation(conv, with_tags=True) if conv else None
        if payload is None:
            return control_response(404, {"ok": False, "error": f"conversation {conversation_id} not found"})
        return control_response(200, payload)

    def _configure(self, data: dict) -> Response:
        try:
            self._sim.configure(data)
        except ValueError as error:
            return control_response(400, {"ok": False, "error": str(error)})
        return control_response(200, {"ok": True, "config": self._sim.describe_config()})

    def _set_faults(self, data: dict) -> Response:
        specs = data["faults"] if "faults" in data else [data]
        try:
            if not isinstance(specs, list):
                raise ValueError("faults must be a list")
            faults = [Fault(spec) for spec in specs]
        except ValueError as error:
            return control_response(400, {"ok": False, "error": str(error)})
        self._sim.faults.configure(faults)
        return control_response(200, {"ok": True, "faults": self._sim.faults.describe()})

    def _act(self, data: dict) -> Response:
        try:
            with self._sim.transaction() as desk:
                result = desk.ui_action(data)
        except LookupError as error:
            return control_response(404, {"ok": False, "error": str(error)})
        except ValueError as error:
            return control_response(400, {"ok": False, "error": str(error)})
        return control_response(200, {"ok": True, **result})


# --------------------------------------------------------------------------------------------
# The simulator
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 0
    control_port: int = 0
    api_key: str = DEFAULT_API_KEY
    latency_ms: float = 0.0
    webhook_url: typing.Optional[str] = None
    webhook_secret: str = DEFAULT_WEBHOOK_SECRET
    webhook_format: str = "real"
    undo_delay: float = 0.0


class Simulator:
    """Wires helpdesk, webhooks, faults and both listeners together, and owns the one state lock."""

    def __init__(self, config: Config):
        self.config = config
        self.lock = threading.Lock()
        self.helpdesk = Helpdesk(time.time())
        self.webhooks = Webhooks(self)
        self.api = FreeScoutApi(self)
        self.control = ControlApi(self)
        self.api_listener = ApiListener(config.host, config.port, self)
        self.faults = Faults(self.api_listener)
        self._clear_stats()

    def _clear_stats(self) -> None:
        self._requests = 0
        self._by_route = collections.Counter()
        self._by_status = collections.Counter()
        self._inflight = 0
        self._max_inflight = 0
        self._request_seq = itertools.count(1)
        self._request_log = collections.deque(maxlen=REQUEST_LOG_SIZE)

    @contextlib.contextmanager
    def transaction(self):
        """The lock around one helpdesk action; its webhook events are published at the end."""
        with self.lock:
            try:
                yield self.helpdesk
            finally:
                self.webhooks.publish(self.helpdesk.take_events())

    def request_started(self) -> None:
        with self.lock:
            self._inflight += 1
            self._max_inflight = max(self._max_inflight, self._inflight)

    def request_finished(self, label: str, entry: dict) -> None:
        """Counts a finished API request and logs it; `seq` follows completion order."""
        with self.lock:
            self._inflight -= 1
            self._requests += 1
            self._by_route[label] += 1
            self._by_status[str(entry["status"]) if entry["status"] is not None else "none"] += 1
            entry["seq"] = next(self._request_seq)
            self._request_log.append(entry)

    def requests_since(self, seq: int) -> list:
        with self.lock:
            found = []
            for entry in reversed(self._request_log):
                if entry["seq"] <= seq:
                    break
                found.append(entry)
        found.reverse()
        return found

    def stats(self) -> dict:
        with self.lock:
            markers = dict(self.helpdesk.markers_created)
            return {
                "requests": self._requests, "by_route": dict(self._by_route), "by_status": dict(self._by_status),
                "conversations": len(self.helpdesk.conversations),
                "conversations_created": self.helpdesk.conversations_created,
                "markers": markers, "duplicates": sorted(marker for marker, count in markers.items() if count > 1),
                "webhooks": len(self.webhooks.records),
                "inflight": self._inflight, "max_inflight": self._max_inflight,
            }

    def reset(self) -> None:
        with self.lock:
            self.helpdesk.clear()
            self.webhooks.clear()
            self._clear_stats()
        self.faults.configure([])

    def configure(self, data: dict) -> None:
        """Applies POST /_sim/config; validates everything before changing anything."""
        changes = {}
        for key, value in data.items():
            if key in ("latency_ms", "undo_delay"):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                    raise ValueError(f"{key} must be a number >= 0")
            elif key == "webhook_url":
                if value is not None and not isinstance(value, str):
                    raise ValueError("webhook_url must be a string or null")
                value = value or None
            elif key in ("webhook_secret", "api_key"):
                if not isinstance(value, str) or not value:
                    raise ValueError(f"{key} must be a non-empty string")
            elif key == "webhook_format":
                if value not in ("real", "spec"):
                    raise ValueError("webhook_format must be real or spec")
            elif key in ("tags_module", "custom_fields_module"):
                if not isinstance(value, bool):
                    raise ValueError(f"{key} must be true or false")
            else:
                raise ValueError(f"unknown setting {key}")
            changes[key] = value
        with self.lock:
            for key, value in changes.items():
                setattr(self.helpdesk if key.endswith("_module") else self.config, key, value)

    def describe_config(self) -> dict:
        with self.lock:
            return {**dataclasses.asdict(self.config), "tags_module": self.helpdesk.tags_module,
                    "custom_fields_module": self.helpdesk.custom_fields_module}


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def write_port_file(path: str, ports: dict) -> None:
    """Writes atomically, so a script polling for the file never reads half of it."""
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(ports, handle)
    os.replace(temporary, path)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="FreeScout API & Webhooks simulator (see module docstring).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="API port; 0 picks a free one")
    parser.add_argument("--control-port", type=int, default=0, help="control (/_sim) port; 0 picks a free one")
    parser.add_argument("--port-file", help='written as {"api":PORT,"control":PORT,"pid":PID} once both listen')
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every API request")
    parser.add_argument("--webhook-url", help="receives every webhook event")
    parser.add_argument("--webhook-secret", default=DEFAULT_WEBHOOK_SECRET)
    parser.add_argument("--webhook-format", choices=("real", "spec"), default="real",
                        help="real: FreeScout's bare object + base64 HMAC-SHA1; spec: integration-spec envelope")
    parser.add_argument("--undo-delay", type=float, default=0.0,
                        help="seconds before user-created and agent-reply events (FreeScout: 15)")
    parser.add_argument("--quiet", action="store_true", help="do not print the startup line")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    sim = Simulator(Config(host=args.host, port=args.port, control_port=args.control_port, api_key=args.api_key,
                           latency_ms=args.latency_ms, webhook_url=args.webhook_url,
                           webhook_secret=args.webhook_secret, webhook_format=args.webhook_format,
                           undo_delay=args.undo_delay))
    sim.api_listener.open()
    control = SimServer((args.host, args.control_port), ControlHandler, sim)
    threading.Thread(target=control.serve_forever, name="control-listener", daemon=True).start()
    ports = {"api": sim.api_listener.port, "control": control.server_address[1], "pid": os.getpid()}
    if args.port_file:
        write_port_file(args.port_file, ports)
    if not args.quiet:
        print(f"freescout_sim: api http://{args.host}:{ports['api']} "
              f"control http://{args.host}:{ports['control']}", file=sys.stderr, flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    control.shutdown()
    control.server_close()
    sim.api_listener.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
