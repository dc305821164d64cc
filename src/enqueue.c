/*
 * enqueue.c
 *		The insert path, in the SIEM's own backends: qualifying alerts become
 *		outbox rows in the inserting transaction, and its commit wakes the
 *		worker.
 *
 * Cost matters here more than anywhere: it is paid by every alert the SIEM
 * writes.  So the work is split three ways:
 *  - the row trigger's WHEN clause calls freescout_alert_qualifies(), a few
 *    comparisons of GUC values: rows that do not qualify queue no trigger
 *    event at all;
 *  - the row trigger for a qualifying row only remembers its id;
 *  - the statement trigger writes all remembered rows to the outbox with
 *    one prepared INSERT ... SELECT FROM unnest(...).
 * Remembered rows carry the subtransaction that wrote them, so a rolled-back
 * savepoint forgets exactly its own rows.
 *
 * Why not LISTEN/NOTIFY for the wake: a background worker has no client to
 * deliver notifications to, and a LISTEN it never drains pins the
 * cluster-wide notification queue until it fills.  Instead enqueuing arms a
 * commit callback that sets the worker's latch.  The worker sees the
 * committed rows within microseconds, and a rolled-back insert wakes nobody.
 * The worker also polls the outbox every second, so a lost wake only delays.
 */
#include "freescout_bridge.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/builtins.h"

PG_FUNCTION_INFO_V1(freescout_wake_at_commit);
PG_FUNCTION_INFO_V1(freescout_alert_qualifies);
PG_FUNCTION_INFO_V1(freescout_collect_alert);
PG_FUNCTION_INFO_V1(freescout_flush_alerts);

typedef struct PendingAlert
{
	int64		alert_id;
	int64		incident_id;	/* 0: none */
	int32		severity;
	SubTransactionId subxact;
} PendingAlert;

static PendingAlert *pending = NULL;	/* in TopTransactionContext */
static int	n_pending = 0;
static int	pending_capacity = 0;

static bool callbacks_registered = false;
static bool wake_at_commit = false;

/* ---------- transaction bookkeeping ---------- */

static void
on_xact_event(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (wake_at_commit)
			{
				fsb_count(FSB_C_JOBS_ENQUEUED_WAKES, 1);
				fsb_wake_worker();
			}
			break;
		default:
			break;
	}
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT ||
		event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT ||
		event == XACT_EVENT_PREPARE)
	{
		/* the memory went with TopTransactionContext */
		wake_at_commit = false;
		pending = NULL;
		n_pending = pending_capacity = 0;
	}
}

static void
on_subxact_event(SubXactEvent event, SubTransactionId mySubid,
				 SubTransactionId parentSubid, void *arg)
{
	int			kept = 0;

	if (event != SUBXACT_EVENT_ABORT_SUB)
		return;
	/* subtransaction ids grow: children of the aborted one are larger */
	for (int i = 0; i < n_pending; i++)
		if (pending[i].subxact < mySubid)
			pending[kept++] = pending[i];
	n_pending = kept;
}

static void
register_callbacks(void)
{
	if (callbacks_registered)
		return;
	RegisterXactCallback(on_xact_event, NULL);
	RegisterSubXactCallback(on_subxact_event, NULL);
	callbacks_registered = true;
}

void
fsb_request_wake_at_commit(void)
{
	register_callbacks();
	wake_at_commit = true;
}

Datum
freescout_wake_at_commit(PG_FUNCTION_ARGS)
{
	fsb_request_wake_at_commit();
	PG_RETURN_VOID();
}

/* ---------- the filter in WHEN ---------- */

/*
 * Could this alert need the bridge?  True for alerts at or above the
 * threshold, and for every alert of an incident (the statement trigger
 * decides between linking it and its own ticket).
 */
Datum
freescout_alert_qualifies(PG_FUNCTION_ARGS)
{
	if (!fsb_enabled)
		PG_RETURN_BOOL(false);
	if (!PG_ARGISNULL(1))
		PG_RETURN_BOOL(true);
	PG_RETURN_BOOL(fsb_auto_create_on_alert && !PG_ARGISNULL(0) &&
				   PG_GETARG_INT32(0) >= fsb_auto_create_severity_min);
}

/* ---------- the row trigger ---------- */

static int64
integer_attribute(HeapTuple tuple, TupleDesc desc, const char *name, bool *isnull)
{
	int			attnum = SPI_fnumber(desc, name);
	Datum		value;

	*isnull = true;
	if (attnum <= 0)
		return 0;
	value = heap_getattr(tuple, attnum, desc, isnull);
	if (*isnull)
		return 0;
	switch (TupleDescAttr(desc, attnum - 1)->atttypid)
	{
		case INT2OID:
			return DatumGetInt16(value);
		case INT4OID:
			return DatumGetInt32(value);
		case INT8OID:
			return DatumGetInt64(value);
	}
	elog(ERROR, "column \"%s\" must be smallint, integer or bigint", name);
	return 0;
}

Datum
freescout_collect_alert(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	HeapTuple	tuple;
	TupleDesc	desc;
	PendingAlert *entry;
	bool		isnull;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		elog(ERROR, "freescout_collect_alert() must be an AFTER INSERT row trigger");

	register_callbacks();
	if (n_pending == pending_capacity)
	{
		int			capacity = Max(64, pending_capacity * 2);

		pending = pending ?
			repalloc(pending, sizeof(PendingAlert) * capacity) :
			MemoryContextAlloc(TopTransactionContext, sizeof(PendingAlert) * capacity);
		pending_capacity = capacity;
	}

	tuple = trigdata->tg_trigtuple;
	desc = trigdata->tg_relation->rd_att;
	entry = &pending[n_pending];
	entry->alert_id = integer_attribute(tuple, desc, "alert_id", &isnull);
	entry->incident_id = integer_attribute(tuple, desc, "incident_id", &isnull);
	entry->severity = (int32) integer_attribute(tuple, desc, "severity", &isnull);
	if (isnull)
		entry->severity = 0;
	entry->subxact = GetCurrentSubTransactionId();
	n_pending++;
	return PointerGetDatum(NULL);
}

/* ---------- the statement trigger ---------- */

static ArrayType *
int8_array(int n, int64 (*get) (const PendingAlert *))
{
	Datum	   *values = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		values[i] = Int64GetDatum(get(&pending[i]));
	return construct_array(values, n, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
}

static int64
get_alert_id(const PendingAlert *p)
{
	return p->alert_id;
}

static int64
get_incident_id(const PendingAlert *p)
{
	return p->incident_id;
}

static int64
get_severity(const PendingAlert *p)
{
	return p->severity;
}

/* The extension's owner, who owns the outbox. */
static Oid
extension_owner(void)
{
	Oid			owner;

	if (!fsb_extension_lookup(NULL, &owner))
		elog(ERROR, "extension \"%s\" is not installed", FSB_EXTENSION_NAME);
	return owner;
}

/*
 * Writes the remembered alerts to the outbox.  An alert of an incident joins
 * the incident's ticket when the incident has one or will get one;
 * otherwise it is judged on its own severity.
 *
 * Not SECURITY DEFINER: that would make every INSERT into alerts pay a GUC
 * save and restore, even when nothing qualified.  When there is something to
 * write, we become the extension's owner ourselves, with a restricted
 * security context, and the statement names every function and operator
 * with its schema, so the caller's search_path cannot redirect it.
 */
Datum
freescout_flush_alerts(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	const char *schema;
	Oid			types[6] = {INT8ARRAYOID, INT8ARRAYOID, INT8ARRAYOID, BOOLOID, INT4OID, BOOLOID};
	Datum		values[6];
	char	   *query;
	volatile int queued = 0;
	Oid			saved_user;
	int			saved_context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "freescout_flush_alerts() must be a statement trigger");
	if (n_pending == 0)
		return PointerGetDatum(NULL);

	values[0] = PointerGetDatum(int8_array(n_pending, get_alert_id));
	values[1] = PointerGetDatum(int8_array(n_pending, get_incident_id));
	values[2] = PointerGetDatum(int8_array(n_pending, get_severity));
	values[3] = BoolGetDatum(fsb_auto_create_on_alert);
	values[4] = Int32GetDatum(fsb_auto_create_severity_min);
	values[5] = BoolGetDatum(fsb_auto_create_on_incident);
	n_pending = 0;

	/* alerts lives in the extension's schema: no catalog scan needed */
	schema = quote_identifier(get_namespace_name(RelationGetNamespace(trigdata->tg_relation)));
	query = psprintf("INSERT INTO %1$s.freescout_outbox (kind, alert_id) "
					 "SELECT CASE WHEN joins THEN 'link' ELSE 'create' END, n.alert_id "
					 "  FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3)) "
					 "       AS n(alert_id, incident_id, severity), "
					 "       LATERAL (SELECT n.incident_id OPERATOR(pg_catalog.<>) 0 AND ($6 OR EXISTS ("
					 "           SELECT 1 FROM %1$s.incidents i "
					 "            WHERE i.incident_id OPERATOR(pg_catalog.=) n.incident_id "
					 "              AND i.freescout_ticket_id IS NOT NULL)) AS joins) j "
					 " WHERE joins OR ($4 AND n.severity OPERATOR(pg_catalog.>=) $5)", schema);

	GetUserIdAndSecContext(&saved_user, &saved_context);
	SetUserIdAndSecContext(extension_owner(),
						   saved_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	PG_TRY();
	{
		SPI_connect();
		queued = fsb_spi_run(query, 6, types, values, NULL, SPI_OK_INSERT);
		SPI_finish();
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(saved_user, saved_context);
	}
	PG_END_TRY();

	if (queued > 0)
		fsb_request_wake_at_commit();
	return PointerGetDatum(NULL);
}
