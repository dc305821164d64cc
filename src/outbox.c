/*
 * outbox.c
 *		The SQL side of the worker: short transactions that claim outbox jobs
 *		with everything needed to send them, and record what happened.
 *
 * Data flows one way: SIEM row -> outbox row (same transaction, written by
 * the triggers) -> claim (here, committed before any request is sent) ->
 * HTTP (delivery.c, no transaction open) -> result (here, one transaction
 * per batch).  A claim is a reservation: if we crash after it, the job comes
 * back marked needs_lookup and the next attempt looks for the conversation
 * before creating one.
 */
#include "freescout_bridge.h"
#include "outbox.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#define POSTPONE_MS		1000

static const char *schema = NULL;	/* quoted, valid inside one transaction */
static bool alerts_have_incident = false;
static MemoryContext caller_cxt = NULL;	/* restored by outbox_end() */

/* ---------- transactions ---------- */

/*
 * Opens a short transaction for one unit of worker work.  Returns false when
 * the extension is not installed in this database (not yet, or dropped):
 * the caller still calls outbox_end().
 */
bool
outbox_begin(void)
{
	Oid			nsp;
	Oid			alerts_rel;

	caller_cxt = CurrentMemoryContext;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	schema = NULL;

	nsp = fsb_extension_schema();
	if (!OidIsValid(nsp))
		return false;
	schema = quote_identifier(get_namespace_name(nsp));
	alerts_rel = get_relname_relid("alerts", nsp);
	alerts_have_incident = OidIsValid(alerts_rel) &&
		get_attnum(alerts_rel, "incident_id") != InvalidAttrNumber;
	return true;
}

/*
 * Commits the unit of work.  Only a claim must be durable before requests
 * leave; a pass that merely records outcomes commits asynchronously, since
 * losing it in a crash only re-runs the jobs, and every re-run either looks
 * before it creates or repeats an idempotent PUT.  That spares the SIEM's
 * own commits a WAL flush per delivered request.
 */
void
outbox_end(bool durable)
{
	SPI_finish();
	PopActiveSnapshot();
	if (!durable)
		(void) set_config_option("synchronous_commit", "off", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
	CommitTransactionCommand();
	/* without this, autovacuum never hears of the worker's writes */
	pgstat_report_stat(false);
	schema = NULL;
	MemoryContextSwitchTo(caller_cxt);
}

const char *
outbox_schema(void)
{
	return schema;
}

/* ---------- small SPI helpers ---------- */

static char *
text_col(int row, int col)
{
	return SPI_getvalue(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col);
}

static int64
int64_col(int row, int col, int64 if_null)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col, &isnull);
	Oid			type = SPI_gettypeid(SPI_tuptable->tupdesc, col);

	if (isnull)
		return if_null;
	if (type == INT4OID)
		return DatumGetInt32(d);
	if (type == INT2OID)
		return DatumGetInt16(d);
	return DatumGetInt64(d);
}

/* ---------- recovery ---------- */

/*
 * Jobs left in flight by a crash may or may not have reached FreeScout.
 * The ones that create something look before they act again.
 */
int
outbox_recover_inflight(void)
{
	return fsb_spi_run(psprintf("UPDATE %s.freescout_outbox SET state = 'pending', due_at = now(), "
				   "needs_lookup = needs_lookup OR kind IN ('create', 'note', 'link') "
				   "WHERE state = 'inflight'", schema),
			   0, NULL, NULL, NULL, SPI_OK_UPDATE);
}

/* ---------- claiming ---------- */

static bool
target_is_busy(List *busy, char kind, int64 id)
{
	ListCell   *lc;

	foreach(lc, busy)
	{
		OutboxJob  *job = (OutboxJob *) lfirst(lc);

		if (job->target_kind == kind && job->target_id == id)
			return true;
	}
	return false;
}

static JobKind
parse_kind(const char *kind)
{
	if (strcmp(kind, "create") == 0)
		return JOB_CREATE;
	if (strcmp(kind, "tags") == 0)
		return JOB_TAGS;
	if (strcmp(kind, "fields") == 0)
		return JOB_FIELDS;
	if (strcmp(kind, "status") == 0)
		return JOB_STATUS;
	if (strcmp(kind, "note") == 0)
		return JOB_NOTE;
	if (strcmp(kind, "link") == 0)
		return JOB_LINK;
	elog(ERROR, "unknown outbox job kind \"%s\"", kind);
	return JOB_CREATE;
}

static void
load_alert_context(OutboxJob *job)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(job->target_id)};
	int64		own_ticket,
				own_conv,
				linked_ticket,
				linked_conv,
				incident_ticket,
				incident_conv;

	fsb_spi_run(psprintf("SELECT to_jsonb(a)::text, own.ticket_id, own.freescout_id, "
			"       lt.ticket_id, lt.freescout_id, a.status::text, m.freescout_status, "
			"       inc.ticket_id, inc.freescout_id "
			"  FROM %1$s.alerts a "
			"  LEFT JOIN %1$s.freescout_tickets own ON own.alert_id = a.alert_id "
			"  LEFT JOIN %1$s.freescout_tickets lt ON lt.ticket_id = a.freescout_ticket_id "
			"  LEFT JOIN %1$s.freescout_status_map m ON m.siem_status = a.status::text "
			"  LEFT JOIN LATERAL (SELECT t.ticket_id, t.freescout_id "
			"                       FROM %1$s.incidents i "
			"                       JOIN %1$s.freescout_tickets t ON t.ticket_id = i.freescout_ticket_id "
			"                      WHERE %2$s) inc ON true "
			" WHERE a.alert_id = $1",
			schema, alerts_have_incident ? "i.incident_id = a.incident_id" : "false"),
		1, types, values, NULL, SPI_OK_SELECT);
	if (SPI_processed == 0)
		return;					/* deleted: row_json stays NULL */

	job->row_json = text_col(0, 1);
	own_ticket = int64_col(0, 2, 0);
	own_conv = int64_col(0, 3, 0);
	linked_ticket = int64_col(0, 4, 0);
	linked_conv = int64_col(0, 5, 0);
	job->siem_status = text_col(0, 6);
	job->freescout_status = text_col(0, 7);
	incident_ticket = int64_col(0, 8, 0);
	incident_conv = int64_col(0, 9, 0);

	switch (job->kind)
	{
		case JOB_CREATE:
			job->ticket_id = own_ticket ? own_ticket : linked_ticket;
			break;
		case JOB_NOTE:
			/* a note on an alert goes wherever the alert's ticket is */
			job->ticket_id = linked_ticket ? linked_ticket : own_ticket;
			job->conversation_id = linked_ticket ? linked_conv : own_conv;
			break;
		case JOB_LINK:
			job->ticket_id = incident_ticket;
			job->conversation_id = incident_conv;
			job->already_linked = incident_ticket != 0 && linked_ticket == incident_ticket;
			break;
		default:
			job->ticket_id = own_ticket;
			job->conversation_id = own_conv;
	}
}

static void
load_incident_context(OutboxJob *job)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(job->target_id)};
	char	   *members = alerts_have_incident ?
		psprintf("(SELECT COALESCE(jsonb_agg(jsonb_build_object('alert_id', a.alert_id, "
			"'title', a.title, 'severity', a.severity) ORDER BY a.alert_id), '[]') "
			"FROM %s.alerts a WHERE a.incident_id = i.incident_id)", schema) :
		pstrdup("'[]'::jsonb");

	fsb_spi_run(psprintf("SELECT (to_jsonb(i) || jsonb_build_object('_alerts', %2$s))::text, "
			"       own.ticket_id, own.freescout_id, i.status::text, m.freescout_status "
			"  FROM %1$s.incidents i "
			"  LEFT JOIN %1$s.freescout_tickets own ON own.incident_id = i.incident_id "
			"  LEFT JOIN %1$s.freescout_status_map m ON m.siem_status = i.status::text "
			" WHERE i.incident_id = $1", schema, members),
		1, types, values, NULL, SPI_OK_SELECT);
	if (SPI_processed == 0)
		return;
	job->row_json = text_col(0, 1);
	job->ticket_id = int64_col(0, 2, 0);
	job->conversation_id = int64_col(0, 3, 0);
	job->siem_status = text_col(0, 4);
	job->freescout_status = text_col(0, 5);
}

static void
load_note(OutboxJob *job)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(job->payload_json ? job->payload_json : "{}")};

	fsb_spi_run(psprintf("SELECT w.worklog_id, w.body, w.author FROM %s.freescout_worklog w "
			" WHERE w.worklog_id = ($1::jsonb ->> 'worklog_id')::bigint", schema),
		1, types, values, NULL, SPI_OK_SELECT);
	if (SPI_processed == 0)
	{
		job->row_json = NULL;	/* the note was deleted: nothing to send */
		return;
	}
	job->worklog_id = int64_col(0, 1, 0);
	job->note_html = render_siem_note(text_col(0, 2), text_col(0, 3));
	if (job->row_json == NULL)
		job->row_json = pstrdup("{}");
}

/*
 * Claims up to `limit` due jobs, at most one per alert or incident (and none
 * for a target already in `busy`), so changes to one ticket stay in order.
 * The worker is the only claimer, so the rows just read as pending still are;
 * the UPDATE filters on id alone, which lets it use the primary key instead
 * of walking the whole pending queue.  The claim commits before any
 * request leaves.
 */
List *
outbox_claim(int limit, List *busy, MemoryContext jobs_cxt)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(limit * 4)};
	Datum	   *ids;
	int			nids = 0;
	List	   *jobs = NIL;
	List	   *chosen = NIL;
	ArrayType  *id_array;
	int			n;

	n = fsb_spi_run(psprintf("SELECT id, COALESCE(alert_id, incident_id), alert_id IS NULL "
				"  FROM %s.freescout_outbox "
				" WHERE state = 'pending' AND due_at <= now() "
				" ORDER BY due_at, id LIMIT $1", schema),
			1, types, values, NULL, SPI_OK_SELECT);
	if (n == 0)
		return NIL;

	ids = palloc(sizeof(Datum) * n);
	for (int i = 0; i < n && nids < limit; i++)
	{
		OutboxJob  *probe = palloc0(sizeof(OutboxJob));
		char	   *is_incident = text_col(i, 3);

		probe->target_kind = (is_incident[0] == 't') ? 'i' : 'a';
		probe->target_id = int64_col(i, 2, 0);
		if (target_is_busy(busy, probe->target_kind, probe->target_id) ||
			target_is_busy(chosen, probe->target_kind, probe->target_id))
		{
			pfree(probe);
			continue;
		}
		chosen = lappend(chosen, probe);
		ids[nids++] = Int64GetDatum(int64_col(i, 1, 0));
	}
	list_free_deep(chosen);

	id_array = construct_array(ids, nids, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
	types[0] = INT8ARRAYOID;
	values[0] = PointerGetDatum(id_array);
	n = fsb_spi_run(psprintf("UPDATE %s.freescout_outbox "
				"   SET state = 'inflight', attempts = attempts + 1, "
				"       first_claimed_at = COALESCE(first_claimed_at, now()) "
				" WHERE id = ANY($1) "
				"RETURNING id, kind, alert_id, incident_id, attempts, needs_lookup, "
				"          payload::text, first_claimed_at", schema),
			1, types, values, NULL, SPI_OK_UPDATE_RETURNING);

	for (int i = 0; i < n; i++)
	{
		MemoryContext job_cxt = AllocSetContextCreate(jobs_cxt, "freescout_bridge job",
													  ALLOCSET_SMALL_SIZES);
		MemoryContext old = MemoryContextSwitchTo(job_cxt);
		OutboxJob  *job = palloc0(sizeof(OutboxJob));
		bool		isnull;
		char	   *lookup;

		job->id = int64_col(i, 1, 0);
		job->kind = parse_kind(text_col(i, 2));
		job->target_kind = int64_col(i, 3, 0) != 0 ? 'a' : 'i';
		job->target_id = job->target_kind == 'a' ? int64_col(i, 3, 0) : int64_col(i, 4, 0);
		job->attempts = (int) int64_col(i, 5, 0);
		lookup = text_col(i, 6);
		job->needs_lookup = lookup && lookup[0] == 't';
		job->payload_json = text_col(i, 7);
		job->first_claimed_at = DatumGetTimestampTz(
			SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 8, &isnull));
		job->retry_after_s = -1;
		MemoryContextSwitchTo(jobs_cxt);
		jobs = lappend(jobs, job);
		MemoryContextSwitchTo(old);
	}

	/* The context queries reuse SPI_tuptable, so run them after the loop. */
	{
		ListCell   *lc;

		foreach(lc, jobs)
		{
			OutboxJob  *job = (OutboxJob *) lfirst(lc);
			MemoryContext old = MemoryContextSwitchTo(GetMemoryChunkContext(job));

			if (job->target_kind == 'a')
				load_alert_context(job);
			else
				load_incident_context(job);
			if (job->kind == JOB_NOTE)
				load_note(job);
			MemoryContextSwitchTo(old);
		}
	}
	return jobs;
}

/*
 * When the next pending job falls due.  With future_only, jobs already due
 * are left out: the caller just claimed all it could, so those wait for a
 * job on the same target to finish, which wakes the worker anyway.
 */
TimestampTz
outbox_next_due(bool future_only)
{
	bool		isnull;
	Datum		d;

	fsb_spi_run(psprintf("SELECT min(due_at) FROM %s.freescout_outbox WHERE state = 'pending'%s",
			schema, future_only ? " AND due_at > now()" : ""),
		0, NULL, NULL, NULL, SPI_OK_SELECT);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? 0 : DatumGetTimestampTz(d);
}

/* ---------- recording ---------- */

static void
log_calls(OutboxJob *job)
{
	ListCell   *lc;
	char	   *insert = psprintf("INSERT INTO %s.freescout_sync_log "
							 "(ticket_id, direction, event_type, payload, success, error_message, "
							 " http_status, latency_ms, alert_id, incident_id, outbox_id) "
							 "VALUES ($1, 'to_freescout', $2, "
							 " jsonb_build_object('method', $3, 'path', $4, 'attempt', $5, "
							 "                    'adopted', $6), "
							 " $7, $8, $9, $10, $11, $12, $13)", schema);

	foreach(lc, job->calls)
	{
		CallRecord *call = (CallRecord *) lfirst(lc);
		Oid			types[13] = {INT4OID, TEXTOID, TEXTOID, TEXTOID, INT4OID, BOOLOID,
		BOOLOID, TEXTOID, INT4OID, FLOAT8OID, INT8OID, INT8OID, INT8OID};
		Datum		values[13];
		char		nulls[13];

		memset(nulls, ' ', sizeof(nulls));
		values[0] = Int32GetDatum((int32) job->ticket_id);
		if (job->ticket_id == 0)
			nulls[0] = 'n';
		values[1] = CStringGetTextDatum(call->event_type);
		/* a call record without a method is a decision made without a request */
		values[2] = call->method ? CStringGetTextDatum(call->method) : (Datum) 0;
		nulls[2] = call->method ? ' ' : 'n';
		values[3] = call->path ? CStringGetTextDatum(call->path) : (Datum) 0;
		nulls[3] = call->path ? ' ' : 'n';
		values[4] = Int32GetDatum(job->attempts);
		values[5] = BoolGetDatum(job->adopted && lnext(job->calls, lc) == NULL);
		values[6] = BoolGetDatum(call->success);
		values[7] = call->error ? CStringGetTextDatum(call->error) : (Datum) 0;
		if (!call->error)
			nulls[7] = 'n';
		values[8] = Int32GetDatum((int32) call->http_status);
		if (call->http_status == 0)
			nulls[8] = 'n';
		values[9] = Float8GetDatum(call->latency_ms);
		nulls[9] = call->method ? ' ' : 'n';
		values[10] = Int64GetDatum(job->target_id);
		values[11] = Int64GetDatum(job->target_id);
		if (job->target_kind == 'a')
			nulls[11] = 'n';
		else
			nulls[10] = 'n';
		values[12] = Int64GetDatum(job->id);
		fsb_spi_run(insert, 13, types, values, nulls, SPI_OK_INSERT);
	}
}

static void
delete_job(OutboxJob *job)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(job->id)};

	fsb_spi_run(psprintf("DELETE FROM %s.freescout_outbox WHERE id = $1", schema),
		1, types, values, NULL, SPI_OK_DELETE);
}

static void
enqueue_follow_up(OutboxJob *job, const char *kind)
{
	Oid			types[2] = {TEXTOID, INT8OID};
	Datum		values[2] = {CStringGetTextDatum(kind), Int64GetDatum(job->target_id)};

	fsb_spi_run(psprintf("INSERT INTO %s.freescout_outbox (kind, %s) VALUES ($1, $2)",
			schema, job->target_kind == 'a' ? "alert_id" : "incident_id"),
		2, types, values, NULL, SPI_OK_INSERT);
}

/*
 * The conversation exists in FreeScout: make it the target's ticket, link
 * the SIEM rows, queue tags and custom fields, and tell listeners.
 */
static void
record_ticket(OutboxJob *job)
{
	const char *target_col = job->target_kind == 'a' ? "alert_id" : "incident_id";
	Oid			types[5] = {INT4OID, INT4OID, INT8OID, TEXTOID, TEXTOID};
	Datum		values[5];
	char	   *url = fsapi_ticket_url(job->conversation.id);
	int64		ticket_id;
	char	   *notify;

	values[0] = Int32GetDatum((int32) job->conversation.id);
	values[1] = Int32GetDatum((int32) job->conversation.number);
	values[2] = Int64GetDatum(job->target_id);
	values[3] = CStringGetTextDatum(url);
	values[4] = CStringGetTextDatum(job->conversation.status);

	fsb_spi_run(psprintf("INSERT INTO %1$s.freescout_tickets "
			"(freescout_id, freescout_number, %2$s, ticket_url, status, updated_at, synced_at) "
			"VALUES ($1, $2, $3, $4, $5, now(), now()) "
			"ON CONFLICT DO NOTHING RETURNING ticket_id", schema, target_col),
		5, types, values, NULL, SPI_OK_INSERT_RETURNING);
	if (SPI_processed == 0)
	{
		/* someone recorded it first (cannot happen with one worker) */
		fsb_spi_run(psprintf("SELECT ticket_id FROM %s.freescout_tickets WHERE %s = $3 OR freescout_id = $1",
				schema, target_col),
			5, types, values, NULL, SPI_OK_SELECT);
		if (SPI_processed == 0)
			elog(ERROR, "could not record FreeScout conversation " INT64_FORMAT,
				 job->conversation.id);
	}
	ticket_id = int64_col(0, 1, 0);
	job->ticket_id = ticket_id;

	types[0] = INT4OID;
	values[0] = Int32GetDatum((int32) ticket_id);
	fsb_spi_run(psprintf("UPDATE %1$s.%2$s SET freescout_ticket_id = $1 "
			" WHERE %3$s = $3 AND freescout_ticket_id IS DISTINCT FROM $1",
			schema, job->target_kind == 'a' ? "alerts" : "incidents", target_col),
		5, types, values, NULL, SPI_OK_UPDATE);
	/*
	 * Link the alerts the body lists.  An alert that joined after the body
	 * was rendered keeps its own link job, which says so in a note.
	 */
	if (job->target_kind == 'i' && job->content && job->content->n_member_alerts > 0)
	{
		Datum	   *members = palloc(sizeof(Datum) * job->content->n_member_alerts);
		Oid			link_types[2] = {INT4OID, INT8ARRAYOID};
		Datum		link_values[2];

		for (int i = 0; i < job->content->n_member_alerts; i++)
			members[i] = Int64GetDatum(job->content->member_alerts[i]);
		link_values[0] = Int32GetDatum((int32) ticket_id);
		link_values[1] = PointerGetDatum(construct_array(members, job->content->n_member_alerts,
														 INT8OID, sizeof(int64), FLOAT8PASSBYVAL,
														 TYPALIGN_DOUBLE));
		fsb_spi_run(psprintf("UPDATE %s.alerts SET freescout_ticket_id = $1 "
				" WHERE alert_id = ANY($2) AND freescout_ticket_id IS NULL", schema),
			2, link_types, link_values, NULL, SPI_OK_UPDATE);
	}

	enqueue_follow_up(job, "tags");
	if (fsb_custom_fields && fsb_custom_fields[0] != '\0')
		enqueue_follow_up(job, "fields");

	notify = psprintf("{\"%s\":" INT64_FORMAT ",\"ticket_id\":" INT64_FORMAT
					  ",\"number\":" INT64_FORMAT ",\"url\":%s}",
					  target_col, job->target_id, ticket_id, job->conversation.number,
					  fsb_json_escape_for_log(url));
	types[3] = TEXTOID;
	values[3] = CStringGetTextDatum(notify);
	fsb_spi_run("SELECT pg_notify('freescout_ticket', $4)", 5, types, values, NULL, SPI_OK_SELECT);

	fsb_count(job->adopted ? FSB_C_TICKETS_ADOPTED : FSB_C_TICKETS_CREATED, 1);
}

/*
 * The SIEM status may have changed again while this job was in flight, and
 * the trigger skips queueing while a status job looks pending, so that
 * change could be lost.  If the status FreeScout now has is not what the
 * SIEM status maps to, queue one more job.
 */
static void
requeue_if_status_moved(OutboxJob *job)
{
	const char *target = job->target_kind == 'a' ? "alert_id" : "incident_id";
	Oid			types[2] = {INT8OID, TEXTOID};
	Datum		values[2] = {Int64GetDatum(job->target_id),
	CStringGetTextDatum(job->freescout_status)};

	fsb_spi_run(psprintf("INSERT INTO %1$s.freescout_outbox (kind, %3$s) "
						 "SELECT 'status', x.%3$s FROM %1$s.%2$s x "
						 "  JOIN %1$s.freescout_status_map m ON m.siem_status = x.status::text "
						 " WHERE x.%3$s = $1 AND m.freescout_status IS DISTINCT FROM $2 "
						 "   AND NOT EXISTS (SELECT 1 FROM %1$s.freescout_outbox o "
						 "        WHERE o.kind = 'status' AND o.%3$s = $1 AND o.state = 'pending')",
						 schema, job->target_kind == 'a' ? "alerts" : "incidents", target),
				2, types, values, NULL, SPI_OK_INSERT);
}

static void
record_done(OutboxJob *job)
{
	Oid			types[3] = {INT8OID, TEXTOID, INT8OID};
	Datum		values[3];

	values[0] = Int64GetDatum(job->ticket_id);
	values[1] = CStringGetTextDatum(job->freescout_status ? job->freescout_status : "");
	values[2] = Int64GetDatum(job->thread_id);

	switch (job->kind)
	{
		case JOB_CREATE:
			record_ticket(job);
			break;
		case JOB_STATUS:
			fsb_spi_run(psprintf("UPDATE %s.freescout_tickets SET status = $2, updated_at = now(), "
					"synced_at = now() WHERE ticket_id = $1", schema),
				3, types, values, NULL, SPI_OK_UPDATE);
			requeue_if_status_moved(job);
			break;
		case JOB_NOTE:
			values[1] = Int64GetDatum(job->worklog_id);
			types[1] = INT8OID;
			fsb_spi_run(psprintf("UPDATE %s.freescout_worklog SET ticket_id = $1, "
					"freescout_thread_id = NULLIF($3, 0) WHERE worklog_id = $2", schema),
				3, types, values, NULL, SPI_OK_UPDATE);
			break;
		case JOB_LINK:
			values[1] = Int64GetDatum(job->target_id);
			types[1] = INT8OID;
			fsb_spi_run(psprintf("UPDATE %s.alerts SET freescout_ticket_id = $1 WHERE alert_id = $2", schema),
				3, types, values, NULL, SPI_OK_UPDATE);
			break;
		case JOB_TAGS:
		case JOB_FIELDS:
			break;
	}
	delete_job(job);
}

static void
reschedule(OutboxJob *job, long delay_ms, bool dead, bool count_attempt)
{
	Oid			types[5] = {INT8OID, FLOAT8OID, BOOLOID, TEXTOID, BOOLOID};
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};

	values[0] = Int64GetDatum(job->id);
	values[1] = Float8GetDatum(delay_ms / 1000.0);
	values[2] = BoolGetDatum(job->needs_lookup || job->uncertain);
	values[3] = job->error ? CStringGetTextDatum(job->error) : (Datum) 0;
	if (!job->error)
		nulls[3] = 'n';
	values[4] = BoolGetDatum(count_attempt);
	fsb_spi_run(psprintf("UPDATE %s.freescout_outbox SET state = %s, "
			" due_at = now() + make_interval(secs => $2), needs_lookup = $3, "
			" last_error = $4, attempts = attempts - CASE WHEN $5 THEN 0 ELSE 1 END "
			" WHERE id = $1", schema, dead ? "'dead'" : "'pending'"),
		5, types, values, nulls, SPI_OK_UPDATE);
}

/* Records the outcome of every finished job, in the caller's transaction. */
void
outbox_record(List *finished)
{
	ListCell   *lc;

	foreach(lc, finished)
	{
		OutboxJob  *job = (OutboxJob *) lfirst(lc);
		long		delay;

		log_calls(job);
		switch (job->outcome)
		{
			case OUTCOME_DONE:
				record_done(job);
				break;
			case OUTCOME_SKIPPED:
				delete_job(job);
				break;
			case OUTCOME_POSTPONE:
				reschedule(job, POSTPONE_MS, false, false);
				break;
			case OUTCOME_RETRY:
				if (job->attempts >= fsb_max_attempts)
				{
					job->error = psprintf("gave up after %d attempts: %s", job->attempts,
										  job->error ? job->error : "unknown error");
					reschedule(job, 0, true, true);
					fsb_count(FSB_C_DEAD_LETTERED, 1);
					break;
				}
				delay = delivery_backoff_ms(job->attempts);
				if (job->retry_after_s >= 0)
					delay = Max(delay / 4, job->retry_after_s * 1000L);
				reschedule(job, delay, false, true);
				fsb_count(FSB_C_RETRIES_SCHEDULED, 1);
				break;
			case OUTCOME_DEAD:
				reschedule(job, 0, true, true);
				fsb_count(FSB_C_DEAD_LETTERED, 1);
				break;
			case OUTCOME_RUNNING:
				elog(ERROR, "outbox job " INT64_FORMAT " recorded while still running", job->id);
		}
	}
}

/* ---------- manual ticket requests ---------- */

/* The ticket an alert or incident already has, or 0. */
int64
outbox_ticket_for_target(char target_kind, int64 target_id)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(target_id)};

	if (target_kind == 'a')
		fsb_spi_run(psprintf("SELECT COALESCE(own.ticket_id, a.freescout_ticket_id) FROM %1$s.alerts a "
				"LEFT JOIN %1$s.freescout_tickets own ON own.alert_id = a.alert_id "
				"WHERE a.alert_id = $1", schema), 1, types, values, NULL, SPI_OK_SELECT);
	else
		fsb_spi_run(psprintf("SELECT ticket_id FROM %s.freescout_tickets WHERE incident_id = $1", schema),
			1, types, values, NULL, SPI_OK_SELECT);
	return SPI_processed > 0 ? int64_col(0, 1, 0) : 0;
}

/*
 * Makes sure a create job exists for the target and is due now, reviving a
 * dead one.  Returns its id, or 0 when the target already has a ticket
 * (then *existing_ticket is set).
 */
int64
outbox_queue_ticket_request(char target_kind, int64 target_id, int64 *existing_ticket)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(target_id)};
	const char *col = target_kind == 'a' ? "alert_id" : "incident_id";

	*existing_ticket = outbox_ticket_for_target(target_kind, target_id);
	if (*existing_ticket != 0)
		return 0;

	fsb_spi_run(psprintf("UPDATE %s.freescout_outbox SET due_at = now(), "
			" attempts = CASE WHEN state = 'dead' THEN 0 ELSE attempts END, "
			" state = CASE WHEN state = 'dead' THEN 'pending' ELSE state END "
			" WHERE kind = 'create' AND %s = $1 RETURNING id", schema, col),
		1, types, values, NULL, SPI_OK_UPDATE_RETURNING);
	if (SPI_processed > 0)
		return int64_col(0, 1, 0);
	fsb_spi_run(psprintf("INSERT INTO %s.freescout_outbox (kind, %s) VALUES ('create', $1) RETURNING id",
			schema, col),
		1, types, values, NULL, SPI_OK_INSERT_RETURNING);
	return int64_col(0, 1, 0);
}

/* ---------- deferred log rows ---------- */

void
outbox_write_deferred_logs(void)
{
	DeferredLogEntry entries[FSB_DEFERRED_LOGS];
	int			n = 0;

	LWLockAcquire(fsb_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < FSB_DEFERRED_LOGS; i++)
	{
		if (!fsb_shared->deferred_logs[i].used)
			continue;
		entries[n++] = fsb_shared->deferred_logs[i];
		fsb_shared->deferred_logs[i].used = false;
	}
	LWLockRelease(fsb_shared->lock);

	for (int i = 0; i < n; i++)
	{
		Oid			types[3] = {TEXTOID, TEXTOID, TEXTOID};
		Datum		values[3] = {CStringGetTextDatum(entries[i].event_type),
			CStringGetTextDatum(entries[i].detail),
		CStringGetTextDatum(entries[i].error)};

		fsb_spi_run(psprintf("INSERT INTO %s.freescout_sync_log "
				"(direction, event_type, payload, success, error_message) "
				"VALUES ('from_freescout', $1, jsonb_build_object('detail', $2), false, $3)",
				schema),
			3, types, values, NULL, SPI_OK_INSERT);
	}
}
