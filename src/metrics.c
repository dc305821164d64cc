/*
 * metrics.c
 *		freescout_metrics(): the worker's counters from shared memory, plus
 *		the queue as the outbox shows it, for dashboards and benchmarks.
 */
#include "freescout_bridge.h"

#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(freescout_metrics);

static const char *const counter_names[FSB_NUM_COUNTERS] = {
	[FSB_C_REQUESTS] = "requests",
	[FSB_C_REQUEST_OK] = "requests_ok",
	[FSB_C_REQUEST_FAILED] = "requests_failed",
	[FSB_C_RETRIES_SCHEDULED] = "retries_scheduled",
	[FSB_C_DEAD_LETTERED] = "dead_lettered",
	[FSB_C_TICKETS_CREATED] = "tickets_created",
	[FSB_C_TICKETS_ADOPTED] = "tickets_adopted",
	[FSB_C_JOBS_ENQUEUED_WAKES] = "commit_wakes",
	[FSB_C_WEBHOOKS_APPLIED] = "webhooks_applied",
	[FSB_C_WEBHOOKS_IGNORED] = "webhooks_ignored",
	[FSB_C_WEBHOOKS_REJECTED] = "webhooks_rejected",
	[FSB_C_SYNC_RUNS] = "sync_runs",
	[FSB_C_WORKER_ERRORS] = "worker_errors",
	[FSB_C_LATENCY_SUM_US] = "request_latency_sum_us",
};

Datum
freescout_metrics(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum		values[2];
	bool		nulls[2] = {false, false};
	int			pid;
	TimestampTz paused_until;
	long		paused_ms = 0;

	InitMaterializedSRF(fcinfo, 0);
	if (!fsb_shared_state_available())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("freescout_bridge is not loaded at server start"),
				 errdetail("The worker and its counters need shared memory."),
				 errhint("Add freescout_bridge to shared_preload_libraries and restart PostgreSQL.")));

	for (int i = 0; i < FSB_NUM_COUNTERS; i++)
	{
		values[0] = CStringGetTextDatum(counter_names[i]);
		values[1] = Int64GetDatum((int64) pg_atomic_read_u64(&fsb_shared->counters[i]));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}

	LWLockAcquire(fsb_shared->lock, LW_SHARED);
	pid = fsb_shared->worker_pid;
	paused_until = fsb_shared->circuit_open_until;
	LWLockRelease(fsb_shared->lock);
	values[0] = CStringGetTextDatum("worker_pid");
	values[1] = Int64GetDatum(pid);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);

	/* > 0 while FreeScout is considered down and sending is paused */
	if (paused_until > GetCurrentTimestamp())
		paused_ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), paused_until);
	values[0] = CStringGetTextDatum("sending_paused_ms");
	values[1] = Int64GetDatum(paused_ms);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	return (Datum) 0;
}
