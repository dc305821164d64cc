/*
 * sync.c
 *		Reconciliation: every freescout.sync_interval seconds, and whenever
 *		freescout_sync() asks, pull the conversations FreeScout changed since
 *		the last run and apply them exactly as a webhook would; then queue the
 *		SIEM-side changes that never reached FreeScout.
 *
 * A lost webhook is repaired here.  A run is three steps of the worker loop:
 * prepare (SQL: where to start), fetch (HTTP: every page of the list API),
 * apply (SQL: one transaction).  The steps never share a function.
 */
#include "freescout_bridge.h"
#include "freescout_api.h"
#include "sync.h"
#include "webhook.h"

#include <cjson/cJSON.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(freescout_sync);

#define SYNC_SLACK_SECS		60	/* re-read a minute back: clock skew, late commits */
#define SYNC_PAGE_SIZE		50

typedef enum SyncStep
{
	SYNC_IDLE,
	SYNC_PREPARED,				/* start point known, first request not sent */
	SYNC_FETCHING,
	SYNC_FETCHED,				/* all pages in memory, waiting for a pass */
} SyncStep;

typedef struct SyncRun
{
	SyncStep	step;
	MemoryContext cxt;
	TimestampTz started_at;
	TimestampTz since;
	int			page;
	List	   *pages;			/* response bodies */
	char	   *error;			/* why fetching stopped, or NULL */
	uint64		generation;		/* request generation this run answers */
	TimestampTz next_at;		/* next periodic run */
	bool		result_pending; /* applied; publish once committed */
	char		result[FSB_MESSAGE_LEN];
} SyncRun;

static SyncRun run;

/* ---------- worker side: deciding ---------- */

static uint64
requested_generation(void)
{
	uint64		gen;

	LWLockAcquire(fsb_shared->lock, LW_SHARED);
	gen = fsb_shared->sync_requested;
	LWLockRelease(fsb_shared->lock);
	return gen;
}

bool
sync_wanted(TimestampTz now)
{
	if (run.step != SYNC_IDLE)
		return run.step == SYNC_FETCHED;
	if (requested_generation() > fsb_shared->sync_completed)
		return true;
	return fsb_sync_interval > 0 && run.next_at != 0 && now >= run.next_at;
}

TimestampTz
sync_next_at(void)
{
	if (run.next_at == 0)
		run.next_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												  fsb_sync_interval * 1000L);
	return fsb_sync_interval > 0 ? run.next_at : 0;
}

/* ---------- worker side: SQL steps (inside the pass's transaction) ---------- */

static const char *
schema(void)
{
	return fsb_schema_quoted();
}

/* Step 1: where to start reading. */
static void
prepare(TimestampTz now)
{
	bool		isnull;
	Datum		d;

	if (SPI_execute(psprintf("SELECT COALESCE(s.last_synced_at, "
							 " (SELECT min(created_at) FROM %1$s.freescout_tickets), now()) "
							 "FROM %1$s.freescout_sync_state s", schema()),
					true, 1) != SPI_OK_SELECT || SPI_processed == 0)
		elog(ERROR, "could not read freescout_sync_state");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

	if (run.cxt == NULL)
		run.cxt = AllocSetContextCreate(TopMemoryContext, "freescout_bridge sync",
										ALLOCSET_DEFAULT_SIZES);
	MemoryContextReset(run.cxt);
	run.pages = NIL;
	run.error = NULL;
	run.page = 0;
	run.started_at = now;
	run.since = DatumGetTimestampTz(d) - SYNC_SLACK_SECS * USECS_PER_SEC;
	run.generation = requested_generation();
	run.step = SYNC_PREPARED;
}

/* Re-queues SIEM changes FreeScout does not show, and notes never sent. */
static int
push_missed_changes(void)
{
	const char *s = schema();
	int			pushed = 0;
	const char *targets[2][2] = {{"alerts", "alert_id"}, {"incidents", "incident_id"}};

	for (int i = 0; i < 2; i++)
	{
		if (SPI_execute(psprintf("INSERT INTO %1$s.freescout_outbox (kind, %3$s) "
								 "SELECT 'status', t.%3$s FROM %1$s.freescout_tickets t "
								 "  JOIN %1$s.%2$s x ON x.%3$s = t.%3$s "
								 "  JOIN %1$s.freescout_status_map m ON m.siem_status = x.status::text "
								 " WHERE m.freescout_status IS DISTINCT FROM t.status "
								 "   AND NOT EXISTS (SELECT 1 FROM %1$s.freescout_outbox o "
								 "        WHERE o.kind = 'status' AND o.%3$s = t.%3$s)",
								 s, targets[i][0], targets[i][1]),
						false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not queue missed status changes");
		pushed += (int) SPI_processed;
	}
	/* needs_lookup: the note may have landed without us hearing of it */
	if (SPI_execute(psprintf("INSERT INTO %1$s.freescout_outbox (kind, alert_id, incident_id, payload, needs_lookup) "
							 "SELECT 'note', w.alert_id, w.incident_id, "
							 "       jsonb_build_object('worklog_id', w.worklog_id), true "
							 "  FROM %1$s.freescout_worklog w "
							 " WHERE w.direction = 'to_freescout' AND w.freescout_thread_id IS NULL "
							 "   AND NOT EXISTS (SELECT 1 FROM %1$s.freescout_outbox o WHERE o.kind = 'note' "
							 "        AND (o.payload ->> 'worklog_id')::bigint = w.worklog_id)", s),
					false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not queue unsent notes");
	pushed += (int) SPI_processed;
	return pushed;
}

/*
 * After the pass that applied the run has committed: only then may a
 * waiting freescout_sync() return, or its caller would not see the changes.
 */
void
sync_publish_result(void)
{
	if (!run.result_pending)
		return;
	LWLockAcquire(fsb_shared->lock, LW_EXCLUSIVE);
	strlcpy(fsb_shared->sync_result, run.result, sizeof(fsb_shared->sync_result));
	if (run.generation > fsb_shared->sync_completed)
		fsb_shared->sync_completed = run.generation;
	LWLockRelease(fsb_shared->lock);
	run.result_pending = false;
	ConditionVariableBroadcast(&fsb_shared->answer_cv);
}

/* The pass that applied the run failed: its changes are gone, so is the run. */
void
sync_forget_result(void)
{
	run.result_pending = false;
	run.step = SYNC_IDLE;
}

/* Step 3: apply every fetched conversation, in the pass's transaction. */
static void
apply(void)
{
	ListCell   *lc;
	int			checked = 0,
				updated = 0,
				notes = 0,
				errors = run.error ? 1 : 0,
				pushed = 0;
	char	   *result;
	Oid			types[2] = {TIMESTAMPTZOID, TEXTOID};
	Datum		values[2];

	foreach(lc, run.pages)
	{
		cJSON	   *root = cJSON_Parse((char *) lfirst(lc));
		const cJSON *list = cJSON_GetObjectItemCaseSensitive(
			cJSON_GetObjectItemCaseSensitive(root, "_embedded"), "conversations");
		const cJSON *conversation;

		if (!cJSON_IsArray(list))
		{
			errors++;
			continue;
		}
		cJSON_ArrayForEach(conversation, list)
		{
			WebhookResult r;

			memset(&r, 0, sizeof(r));
			webhook_apply_conversation(conversation, &r);
			checked++;
			if (r.ignored)
				continue;
			if (r.status_changed || r.assignee_changed)
				updated++;
			notes += r.notes_added;
		}
	}
	if (run.error == NULL)
		pushed = push_missed_changes();

	result = psprintf("{\"checked\":%d,\"updated\":%d,\"notes_added\":%d,\"pushed\":%d,"
					  "\"errors\":%d,\"pages\":%d%s%s}",
					  checked, updated, notes, pushed, errors, list_length(run.pages),
					  run.error ? ",\"error\":" : "",
					  run.error ? fsb_json_escape_for_log(run.error) : "");

	/* only a complete run moves the starting point */
	values[0] = TimestampTzGetDatum(run.started_at);
	values[1] = CStringGetTextDatum(result);
	if (SPI_execute_with_args(psprintf("UPDATE %s.freescout_sync_state SET "
									   "last_synced_at = CASE WHEN ($2::jsonb ->> 'errors')::int = 0 "
									   "  THEN $1 ELSE last_synced_at END, last_result = $2::jsonb",
									   schema()),
							  2, types, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not update freescout_sync_state");
	if (SPI_execute_with_args(psprintf("INSERT INTO %s.freescout_sync_log "
									   "(direction, event_type, payload, success, error_message) "
									   "VALUES ('from_freescout', 'sync', $2::jsonb, "
									   "        ($2::jsonb ->> 'errors')::int = 0, $2::jsonb ->> 'error')",
									   schema()),
							  2, types, values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not log the sync run");

	fsb_count(FSB_C_SYNC_RUNS, 1);
	strlcpy(run.result, result, sizeof(run.result));
	run.result_pending = true;
	run.step = SYNC_IDLE;
	run.next_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), fsb_sync_interval * 1000L);
	MemoryContextReset(run.cxt);
	run.pages = NIL;
}

/* Called by the worker inside a pass: prepare or apply, as the run needs. */
void
sync_database_step(TimestampTz now)
{
	if (run.step == SYNC_FETCHED)
		apply();
	else if (run.step == SYNC_IDLE && sync_wanted(now))
		prepare(now);
}

/* ---------- worker side: HTTP step ---------- */

static HttpRequest *
page_request(int page)
{
	MemoryContext old = MemoryContextSwitchTo(run.cxt);
	HttpRequest *req = palloc0(sizeof(HttpRequest));
	struct pg_tm tm;
	fsec_t		fsec;

	if (timestamp2tm(run.since, NULL, &tm, &fsec, NULL, NULL) != 0)
		elog(ERROR, "timestamp out of range");
	run.page = page;
	req->method = "GET";
	req->url = fsapi_url("/api/conversations?mailboxId=%d&updatedSince=%04d-%02d-%02dT%02d:%02d:%02dZ"
						 "&sortField=updatedAt&sortOrder=asc&embed=threads&pageSize=%d&page=%d",
						 fsb_mailbox_id, tm.tm_year, tm.tm_mon, tm.tm_mday,
						 tm.tm_hour, tm.tm_min, tm.tm_sec, SYNC_PAGE_SIZE, page);
	req->owner = &run;
	MemoryContextSwitchTo(old);
	return req;
}

/* After the pass that prepared the run: the first page's request. */
HttpRequest *
sync_first_request(void)
{
	if (run.step != SYNC_PREPARED)
		return NULL;
	run.step = SYNC_FETCHING;
	return page_request(1);
}

bool
sync_owns(const HttpRequest *req)
{
	return req->owner == &run;
}

/* A page arrived: the next page's request, or NULL when fetching is over. */
HttpRequest *
sync_on_response(HttpRequest *req)
{
	MemoryContext old = MemoryContextSwitchTo(run.cxt);
	cJSON	   *root;
	int64		total_pages = 1;
	HttpRequest *next = NULL;

	if (req->curl_code != 0 || req->http_status != 200)
		run.error = req->curl_code != 0 ?
			psprintf("FreeScout unreachable: %s", req->error ? req->error : "transport error") :
			fsapi_describe_error(req->http_status, req->response);
	else
	{
		run.pages = lappend(run.pages, pstrdup(req->response));
		root = cJSON_Parse(req->response);
		if (root && fsb_json_int64(cJSON_GetObjectItemCaseSensitive(root, "page"),
								   "totalPages", &total_pages) && run.page < total_pages)
			next = page_request(run.page + 1);
	}
	MemoryContextSwitchTo(old);
	if (next == NULL)
		run.step = SYNC_FETCHED;
	return next;
}

/* A request of the run could not even start. */
void
sync_abort_fetch(const char *why)
{
	run.error = MemoryContextStrdup(run.cxt, why);
	run.step = SYNC_FETCHED;
}

/* ---------- backend side: freescout_sync() ---------- */

Datum
freescout_sync(PG_FUNCTION_ARGS)
{
	uint64		generation;
	char		result[FSB_MESSAGE_LEN];
	TimestampTz deadline;
	bool		done = false;

	fsb_require_worker();
	LWLockAcquire(fsb_shared->lock, LW_EXCLUSIVE);
	generation = ++fsb_shared->sync_requested;
	LWLockRelease(fsb_shared->lock);
	fsb_wake_worker();

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										   10L * fsb_request_timeout_ms + 10000);
	ConditionVariablePrepareToSleep(&fsb_shared->answer_cv);
	while (!done)
	{
		LWLockAcquire(fsb_shared->lock, LW_SHARED);
		if (fsb_shared->sync_completed >= generation)
		{
			strlcpy(result, fsb_shared->sync_result, sizeof(result));
			done = true;
		}
		LWLockRelease(fsb_shared->lock);
		if (done)
			break;
		if (GetCurrentTimestamp() >= deadline)
		{
			ConditionVariableCancelSleep();
			ereport(ERROR,
					(errcode(ERRCODE_QUERY_CANCELED),
					 errmsg("timed out waiting for the reconciliation to finish"),
					 errhint("It goes on in the worker; freescout_sync_state.last_result shows its outcome.")));
		}
		ConditionVariableTimedSleep(&fsb_shared->answer_cv, 100, PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(result)));
}
