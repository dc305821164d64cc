"""Reference SIEM backend (FastAPI) showing how an application uses freescout_bridge.

The bridge does the FreeScout work inside PostgreSQL, so the backend stays thin:

* the FreeScout webhook route hands the raw body and headers to ``freescout_webhook()``,
  which verifies the signature and applies status, assignee and notes;
* "Create ticket" calls ``freescout_create_ticket()`` / ``freescout_create_incident_ticket()``;
* status changes are plain ``UPDATE``s of alerts/incidents (the bridge's triggers queue them
  for FreeScout), and notes go through ``freescout_add_note()`` / ``freescout_add_incident_note()``;
* reads join ``freescout_tickets`` and ``freescout_worklog``.

Run with Debian's interpreter (its packages provide fastapi, uvicorn and psycopg 3):

    SIEM_DSN="host=/var/run/postgresql dbname=siem" \\
        /usr/bin/python3 -m uvicorn siem_api.app:app --host 127.0.0.1 --port 8000
"""

import contextlib
import os
import queue
from typing import Any, Iterator, Optional

import psycopg
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Request
from pydantic import BaseModel, Field

MAX_ID = 2**63 - 1
WEBHOOK_ERRORS = {"28000": 401, "22P02": 400, "54000": 400, "22021": 400}


class Pool:
    """A few reusable autocommit connections; psycopg_pool is not needed for this."""

    def __init__(self, dsn: str, size: int = 8):
        self._dsn = dsn
        self._idle: "queue.LifoQueue[psycopg.Connection]" = queue.LifoQueue(size)

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = psycopg.connect(self._dsn, autocommit=True)
        try:
            yield conn
        finally:
            if conn.closed or conn.broken:
                conn.close()
            else:
                try:
                    self._idle.put_nowait(conn)
                except queue.Full:
                    conn.close()


pool = Pool(os.environ.get("SIEM_DSN", ""))
app = FastAPI(title="SIEM API (freescout_bridge reference)")


# ---- models -------------------------------------------------------------------------------------

class TicketLink(BaseModel):
    ticket_id: int
    ticket_number: Optional[int]
    ticket_url: Optional[str]
    status: Optional[str]


class StatusUpdate(BaseModel):
    status: str = Field(..., min_length=1, max_length=50)


class NoteIn(BaseModel):
    text: str = Field(..., min_length=1, max_length=100_000)
    author: Optional[str] = Field(None, max_length=200)


class NoteOut(BaseModel):
    worklog_id: int


# ---- helpers ------------------------------------------------------------------------------------

def fail(error: psycopg.Error, mapping: dict, default: int) -> HTTPException:
    """An HTTP error for a database error, chosen by SQLSTATE."""
    detail = error.diag.message_primary or str(error).strip()
    if error.sqlstate is None and isinstance(error, psycopg.DataError):
        return HTTPException(400, detail=detail)  # refused by psycopg itself, e.g. a NUL in text
    return HTTPException(mapping.get(error.sqlstate, default), detail=detail)


def query_one(sql: str, params: tuple, mapping: Optional[dict] = None, default: int = 500):
    """Runs one statement and returns its first column of the first row (or None)."""
    try:
        with pool.connection() as conn:
            row = conn.execute(sql, params).fetchone()
    except psycopg.Error as error:
        raise fail(error, mapping or {}, default) from error
    return row[0] if row else None


def found(value, what: str, ident: int):
    if value is None:
        raise HTTPException(404, detail=f"{what} {ident} does not exist")
    return value


def alert_id_param(alert_id: int = Path(..., ge=1, le=MAX_ID)) -> int:
    return alert_id


def incident_id_param(incident_id: int = Path(..., ge=1, le=MAX_ID)) -> int:
    return incident_id


async def raw_body(request: Request) -> bytes:
    return await request.body()


TICKET_JSON = """
    'freescout_ticket_number', t.freescout_number, 'freescout_ticket_url', t.ticket_url,
    'freescout_ticket_status', t.status, 'freescout_assignee_id', t.assignee_id,
    'freescout_assignee_name', t.assignee_name"""

WORKLOG_JSON = """
    COALESCE((SELECT jsonb_agg(jsonb_build_object(
        'worklog_id', w.worklog_id, 'direction', w.direction, 'type', w.thread_type,
        'author', w.author, 'body', w.body, 'freescout_thread_id', w.freescout_thread_id,
        'created_at', w.created_at) ORDER BY w.created_at, w.worklog_id)
      FROM freescout_worklog w WHERE w.{key} = x.{key}), '[]'::jsonb)"""


# ---- FreeScout -> SIEM ----------------------------------------------------------------------------

@app.post("/api/v1/integrations/freescout/webhook")
def freescout_webhook(body: bytes = Depends(raw_body),
                      x_freescout_signature: Optional[str] = Header(None),
                      x_freescout_event: Optional[str] = Header(None)) -> Any:
    """FreeScout's webhook: the raw body is verified and applied by the database."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(400, detail="webhook body is not valid UTF-8")
    return query_one("SELECT freescout_webhook(%s, %s, %s)",
                     (text, x_freescout_signature, x_freescout_event), WEBHOOK_ERRORS, 500)


# ---- tickets ------------------------------------------------------------------------------------

def create_ticket(function: str, ident: int) -> TicketLink:
    try:
        with pool.connection() as conn:
            row = conn.execute(f"SELECT ticket_id, freescout_number, ticket_url, status FROM {function}(%s)",
                               (ident,)).fetchone()
    except psycopg.Error as error:
        raise fail(error, {"P0002": 404}, 502) from error
    return TicketLink(ticket_id=row[0], ticket_number=row[1], ticket_url=row[2], status=row[3])


@app.post("/api/v1/alerts/{alert_id}/ticket", response_model=TicketLink)
def create_alert_ticket(alert_id: int = Depends(alert_id_param)) -> TicketLink:
    """The "Create ticket" button: creates or returns the alert's FreeScout conversation."""
    return create_ticket("freescout_create_ticket", alert_id)


@app.post("/api/v1/incidents/{incident_id}/ticket", response_model=TicketLink)
def create_incident_ticket(incident_id: int = Depends(incident_id_param)) -> TicketLink:
    return create_ticket("freescout_create_incident_ticket", incident_id)


# ---- alerts and incidents --------------------------------------------------------------------------

@app.get("/api/v1/alerts/{alert_id}")
def get_alert(alert_id: int = Depends(alert_id_param)) -> dict:
    """The alert with its ticket link and work log."""
    return found(query_one(
        f"""SELECT to_jsonb(x) || jsonb_build_object({TICKET_JSON},
                   'worklog', {WORKLOG_JSON.format(key='alert_id')})
              FROM alerts x LEFT JOIN freescout_tickets t ON t.ticket_id = x.freescout_ticket_id
             WHERE x.alert_id = %s""", (alert_id,)), "alert", alert_id)


@app.get("/api/v1/incidents/{incident_id}")
def get_incident(incident_id: int = Depends(incident_id_param)) -> dict:
    """The incident with its ticket link, work log and alerts."""
    return found(query_one(
        f"""SELECT to_jsonb(x) || jsonb_build_object({TICKET_JSON},
                   'worklog', {WORKLOG_JSON.format(key='incident_id')},
                   'alerts', COALESCE((SELECT jsonb_agg(jsonb_build_object(
                        'alert_id', a.alert_id, 'title', a.title, 'severity', a.severity,
                        'status', a.status, 'freescout_ticket_id', a.freescout_ticket_id)
                        ORDER BY a.alert_id)
                      FROM alerts a WHERE a.incident_id = x.incident_id), '[]'::jsonb))
              FROM incidents x LEFT JOIN freescout_tickets t ON t.ticket_id = x.freescout_ticket_id
             WHERE x.incident_id = %s""", (incident_id,)), "incident", incident_id)


@app.patch("/api/v1/alerts/{alert_id}")
def update_alert(update: StatusUpdate, alert_id: int = Depends(alert_id_param)) -> dict:
    """A SIEM-side status change; the bridge pushes it to FreeScout."""
    status = query_one("UPDATE alerts SET status = %s WHERE alert_id = %s RETURNING status",
                       (update.status, alert_id), {"23514": 400, "22001": 400})
    return {"alert_id": alert_id, "status": found(status, "alert", alert_id)}


@app.patch("/api/v1/incidents/{incident_id}")
def update_incident(update: StatusUpdate, incident_id: int = Depends(incident_id_param)) -> dict:
    status = query_one("UPDATE incidents SET status = %s, updated_at = now() WHERE incident_id = %s "
                       "RETURNING status", (update.status, incident_id), {"23514": 400, "22001": 400})
    return {"incident_id": incident_id, "status": found(status, "incident", incident_id)}


# ---- notes --------------------------------------------------------------------------------------

NOTE_ERRORS = {"P0002": 404, "22023": 400}


@app.post("/api/v1/alerts/{alert_id}/notes", status_code=201, response_model=NoteOut)
def add_alert_note(note: NoteIn, alert_id: int = Depends(alert_id_param)) -> NoteOut:
    """A note written in the SIEM: stored in the work log and posted to the ticket."""
    return NoteOut(worklog_id=query_one("SELECT freescout_add_note(%s, %s, %s)",
                                        (alert_id, note.text, note.author), NOTE_ERRORS))


@app.post("/api/v1/incidents/{incident_id}/notes", status_code=201, response_model=NoteOut)
def add_incident_note(note: NoteIn, incident_id: int = Depends(incident_id_param)) -> NoteOut:
    return NoteOut(worklog_id=query_one("SELECT freescout_add_incident_note(%s, %s, %s)",
                                        (incident_id, note.text, note.author), NOTE_ERRORS))
