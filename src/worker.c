/*
 * worker.c
 *		The freescout_bridge background worker: one per cluster, connected to
 *		freescout.database, alternating short database passes with waiting on
 *		the network.
 *
 * Each turn of the loop either runs a database pass (record what finished,
 * accept synchronous ticket requests, claim due jobs; one transaction) or
 * waits in the HTTP engine for the latch, sockets or a timer.  No
 * transaction is open while requests are in flight.
 *
 * The worker starts after recovery finishes (BgWorkerStart_RecoveryFinished),
 * so it sleeps on a standby and starts at promotion.  It notices the
 * extension being created or dropped because every pass first looks the
 * extension up; when it is absent the worker idles and checks once a second.
 */
#include "freescout_bridge.h"
#include "outbox.h"
#include "sync.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#define IDLE_CHECK_MS			1000
#define ERROR_PAUSE_MS			1000
#define CIRCUIT_BASE_MS			500
#define CIRCUIT_CAP_MS			30000

typedef struct WorkerState
{
	MemoryContext jobs_cxt;		/* parent of each job's own context */
	List	   *running;		/* OutboxJob * with a request in flight */
	List	   *finished;		/* OutboxJob * waiting to be recorded */
	bool		extension_present;
	bool		recovery_needed;	/* jobs marked inflight by a previous life */
	bool		wake;			/* latch set since the last pass */
	bool		more_due;		/* last claim was cut short by capacity */
	TimestampTz next_due;		/* earliest pending job, 0 if none */
	TimestampTz last_pass;
	TimestampTz paused_until;	/* circuit open: FreeScout unavailable */
	TimestampTz circuit_opened_at;	/* when the current pause began */
	int			host_failures;	/* consecutive "unavailable" probes */
	TimestampTz error_backoff_until;
	bool		config_problem_logged;
} WorkerState;

static WorkerState ws;

static void submit_sync_request(HttpRequest *req);

void
fsb_register_worker(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, FSB_EXTENSION_NAME);
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "freescout_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, FSB_WORKER_TYPE);
	snprintf(worker.bgw_type, BGW_MAXLEN, FSB_WORKER_TYPE);
	RegisterBackgroundWorker(&worker);
}

/* ---------- shared memory presence ---------- */

static void
publish_worker(bool running)
{
	LWLockAcquire(fsb_shared->lock, LW_EXCLUSIVE);
	fsb_shared->worker_pid = running ? MyProcPid : 0;
	fsb_shared->worker_procno = running ? MyProc->pgprocno : -1;
	LWLockRelease(fsb_shared->lock);
}

static void
worker_exit(int code, Datum arg)
{
	publish_worker(false);
	http_engine_shutdown();
}

/* ---------- jobs in memory ---------- */

static void
free_job(OutboxJob *job)
{
	MemoryContextDelete(GetMemoryChunkContext(job));
}

static void
finish_job(OutboxJob *job)
{
	MemoryContext old = MemoryContextSwitchTo(ws.jobs_cxt);

	ws.running = list_delete_ptr(ws.running, job);
	ws.finished = lappend(ws.finished, job);
	MemoryContextSwitchTo(old);
}

/*
 * Sends a job's next request.  A failure to even start it (out of memory,
 * a URL curl refuses) becomes a retry of the job, never a lost job.
 */
static void
submit_or_finish(OutboxJob *job, HttpRequest *req)
{
	MemoryContext old;

	if (req == NULL)
	{
		finish_job(job);
		return;
	}
	old = MemoryContextSwitchTo(GetMemoryChunkContext(job));
	PG_TRY();
	{
		http_submit(req);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(GetMemoryChunkContext(job));
		edata = CopyErrorData();
		FlushErrorState();
		job->outcome = OUTCOME_RETRY;
		job->error = psprintf("could not start request: %s", edata->message);
		job->request = NULL;
		finish_job(job);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
}

static void
start_jobs(List *claimed)
{
	ListCell   *lc;

	foreach(lc, claimed)
	{
		OutboxJob  *job = (OutboxJob *) lfirst(lc);
		MemoryContext old = MemoryContextSwitchTo(ws.jobs_cxt);
		HttpRequest *req;

		ws.running = lappend(ws.running, job);
		job->started_at = GetCurrentTimestamp();
		MemoryContextSwitchTo(GetMemoryChunkContext(job));
		req = delivery_start(job);
		MemoryContextSwitchTo(old);
		submit_or_finish(job, req);
	}
}

/* For freescout_metrics(): how long sending stays paused. */
static void
publish_pause(TimestampTz until)
{
	LWLockAcquire(fsb_shared->lock, LW_EXCLUSIVE);
	fsb_shared->circuit_open_until = until;
	LWLockRelease(fsb_shared->lock);
}

/*
 * A job ended.  Its outcome also tells whether FreeScout is there: any
 * real answer closes the circuit; an outage or throttling opens it, and
 * sending resumes with a single probe once the pause ends.
 */
static void
observe_outcome(OutboxJob *job)
{
	if (job->outcome == OUTCOME_RETRY && job->host_unavailable)
	{
		long		delay;
		TimestampTz until;

		/*
		 * The requests that were in flight when FreeScout went away all fail
		 * together; they are one failure, not thirty-two.  Only a request
		 * sent after the circuit opened (a probe) deepens the backoff.
		 */
		if (ws.host_failures > 0 && job->started_at < ws.circuit_opened_at &&
			job->retry_after_s < 0)
			return;
		ws.host_failures++;
		ws.circuit_opened_at = GetCurrentTimestamp();
		if (job->retry_after_s >= 0)
			delay = job->retry_after_s * 1000L;
		else
			delay = Min((long) CIRCUIT_CAP_MS,
						CIRCUIT_BASE_MS * (1L << Min(ws.host_failures - 1, 16)));
		until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), delay);
		if (until > ws.paused_until)
			ws.paused_until = until;
		publish_pause(ws.paused_until);
	}
	else if (job->outcome != OUTCOME_POSTPONE && job->outcome != OUTCOME_SKIPPED &&
			 (ws.host_failures > 0 || ws.paused_until != 0))
	{
		ws.host_failures = 0;
		ws.paused_until = 0;
		publish_pause(0);
	}
}

static void
handle_completions(List *completed)
{
	ListCell   *lc;

	foreach(lc, completed)
	{
		HttpRequest *req = (HttpRequest *) lfirst(lc);
		OutboxJob  *job;
		MemoryContext old;
		HttpRequest *next;

		if (sync_owns(req))
		{
			next = sync_on_response(req);
			if (next == NULL)
				ws.wake = true; /* all pages in: the next pass applies them */
			submit_sync_request(next);
			continue;
		}
		job = (OutboxJob *) req->owner;
		old = MemoryContextSwitchTo(GetMemoryChunkContext(job));
		next = delivery_continue(job, req);

		MemoryContextSwitchTo(old);
		if (next == NULL)
			observe_outcome(job);
		submit_or_finish(job, next);
	}
}

static void
submit_sync_request(HttpRequest *req)
{
	if (req == NULL)
		return;
	PG_TRY();
	{
		http_submit(req);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(ws.jobs_cxt);
		edata = CopyErrorData();
		FlushErrorState();
		sync_abort_fetch(edata->message);
		ws.wake = true;
	}
	PG_END_TRY();
}

/* ---------- synchronous ticket requests (freescout_create_ticket) ---------- */

static void
answer_slot(TicketRequestSlot *slot, int64 ticket_id, int sqlstate,
			const char *message, const char *detail)
{
	if (slot->state == TRS_ABANDONED)
	{
		slot->state = TRS_FREE;
		return;
	}
	slot->ticket_id = ticket_id;
	slot->sqlstate = sqlstate;
	strlcpy(slot->message, message ? message : "", sizeof(slot->message));
	strlcpy(slot->detail, detail ? detail : "", sizeof(slot->detail));
	slot->state = TRS_DONE;
}

/*
 * Attaches each new request to a create job (made due now).  Runs inside the
 * pass's transaction; answers for targets that already have a ticket are
 * given after commit by answer_ticket_requests().
 */
static void
accept_ticket_requests(void)
{
	for (int i = 0; i < FSB_REQUEST_SLOTS; i++)
	{
		TicketRequestSlot *slot = &fsb_shared->slots[i];
		char		kind;
		int64		target;
		int64		existing = 0;
		int64		job_id;

		LWLockAcquire(fsb_shared->lock, LW_SHARED);
		kind = slot->target_kind;
		target = slot->target_id;
		if (slot->state != TRS_SUBMITTED)
			kind = 0;
		LWLockRelease(fsb_shared->lock);
		if (kind == 0)
			continue;

		job_id = outbox_queue_ticket_request(kind, target, &existing);

		LWLockAcquire(fsb_shared->lock, LW_EXCLUSIVE);
		if (slot->state == TRS_SUBMITTED || slot->state == TRS_ABANDONED)
		{
			slot->outbox_id = job_id;
			slot->ticket_id = existing;
			if (slot->state == TRS_SUBMITTED)
				slot->state = TRS_QUEUED;
		}
		LWLockRelease(fsb_shared->lock);
	}
}

static const char *
outcome_message(OutboxJob *job)
{
	switch (job->error_sqlstate)
	{
		case ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION:
			return "FreeScout refused the API key";
		case ERRCODE_CONNECTION_FAILURE:
			return "FreeScout is unreachable or unavailable";
		default:
			return "FreeScout rejected the ticket";
	}
}

/* After commit: tell waiting backends what happened to their jobs. */
static void
answer_ticket_requests(void)
{
	bool		answered = false;
	TimestampTz now = GetCurrentTimestamp();

	LWLockAcquire(fsb_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < FSB_REQUEST_SLOTS; i++)
	{
		TicketRequestSlot *slot = &fsb_shared->slots[i];
		ListCell   *lc;

		if (slot->state != TRS_QUEUED && slot->state != TRS_ABANDONED)
			continue;
		if (slot->outbox_id == 0)
		{
			if (slot->ticket_id != 0 || slot->state == TRS_ABANDONED)
			{
				answer_slot(slot, slot->ticket_id, 0, NULL, NULL);
				answered = true;
			}
			continue;
		}
		foreach(lc, ws.finished)
		{
			OutboxJob  *job = (OutboxJob *) lfirst(lc);

			if (job->id != slot->outbox_id)
				continue;
			if (job->outcome == OUTCOME_DONE || job->outcome == OUTCOME_SKIPPED)
				answer_slot(slot, job->ticket_id, 0, NULL, NULL);
			else
				answer_slot(slot, 0, job->error_sqlstate ? job->error_sqlstate :
							ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
							outcome_message(job), job->error);
			answered = true;
		}
		/* FreeScout is known to be down: say so now rather than time out */
		if (slot->state == TRS_QUEUED && ws.paused_until > now)
		{
			bool		in_flight = false;

			foreach(lc, ws.running)
				if (((OutboxJob *) lfirst(lc))->id == slot->outbox_id)
					in_flight = true;
			if (!in_flight)
			{
				answer_slot(slot, 0, ERRCODE_CONNECTION_FAILURE,
							"FreeScout is unreachable or unavailable",
							"Requests are paused after repeated failures; the ticket request stays queued.");
				answered = true;
			}
		}
	}
	LWLockRelease(fsb_shared->lock);
	if (answered)
		ConditionVariableBroadcast(&fsb_shared->answer_cv);
}

/* Is any synchronous caller waiting for a job that just finished? */
static bool
ticket_requests_answerable(void)
{
	bool		found = false;

	LWLockAcquire(fsb_shared->lock, LW_SHARED);
	for (int i = 0; i < FSB_REQUEST_SLOTS && !found; i++)
	{
		TicketRequestSlot *slot = &fsb_shared->slots[i];
		ListCell   *lc;

		if (slot->state != TRS_QUEUED)
			continue;
		if (slot->outbox_id == 0)
			found = true;
		foreach(lc, ws.finished)
			if (((OutboxJob *) lfirst(lc))->id == slot->outbox_id)
				found = true;
	}
	LWLockRelease(fsb_shared->lock);
	return found;
}

static bool
ticket_requests_waiting(void)
{
	bool		waiting = false;

	LWLockAcquire(fsb_shared->lock, LW_SHARED);
	for (int i = 0; i < FSB_REQUEST_SLOTS && !waiting; i++)
		waiting = fsb_shared->slots[i].state == TRS_SUBMITTED;
	LWLockRelease(fsb_shared->lock);
	return waiting;
}

/* ---------- the database pass ---------- */

static int
claim_capacity(TimestampTz now)
{
	int			running = list_length(ws.running);

	if (!fsb_enabled || fsb_url_problem(fsb_url) != NULL)
		return 0;
	if (ws.paused_until > now)
		return 0;
	if (ws.host_failures > 0)
		return running == 0 ? 1 : 0;	/* probe */
	return Max(0, fsb_max_concurrency - running);
}

static void
drop_finished(void)
{
	ListCell   *lc;

	foreach(lc, ws.finished)
		free_job((OutboxJob *) lfirst(lc));
	list_free(ws.finished);
	ws.finished = NIL;
}

static void
database_pass(TimestampTz now)
{
	List	   *claimed = NIL;
	int			capacity = claim_capacity(now);

	pgstat_report_activity(STATE_RUNNING, "freescout_bridge: recording and claiming");
	ws.extension_present = outbox_begin();
	if (ws.extension_present)
	{
		if (ws.recovery_needed && ws.running == NIL)
		{
			int			n = outbox_recover_inflight();

			if (n > 0)
				ereport(LOG,
						(errmsg("freescout_bridge: %d job(s) left in flight by a previous worker are queued again", n),
						 errdetail("Jobs that may have reached FreeScout look for their conversation before creating it.")));
			ws.recovery_needed = false;
		}
		outbox_write_deferred_logs();
		if (ws.finished != NIL)
			outbox_record(ws.finished);
		accept_ticket_requests();
		ws.more_due = false;
		if (capacity > 0 && !ws.recovery_needed)
		{
			claimed = outbox_claim(capacity, ws.running, ws.jobs_cxt);
			ws.more_due = list_length(claimed) >= capacity;
		}
		ws.next_due = outbox_next_due(capacity > 0 && !ws.more_due);
		sync_database_step(now);
	}
	/* tickets handed to waiting callers must survive a crash, as must claims */
	outbox_end(claimed != NIL || ticket_requests_answerable());
	pgstat_report_activity(STATE_IDLE, NULL);

	answer_ticket_requests();
	sync_publish_result();
	drop_finished();
	ws.last_pass = now;
	ws.wake = false;
	start_jobs(claimed);
	list_free(claimed);
	submit_sync_request(sync_first_request());
}

/*
 * An error in a pass (the extension dropped under our feet, a full disk)
 * must not kill the worker or lose jobs: abort, report, and retry after a
 * pause.  Finished jobs stay in memory and are recorded by a later pass; if
 * the extension went away, they have nowhere to go and are dropped.
 */
static void
database_pass_guarded(TimestampTz now)
{
	MemoryContext loop_cxt = CurrentMemoryContext;

	PG_TRY();
	{
		database_pass(now);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(loop_cxt);
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
		pgstat_report_activity(STATE_IDLE, NULL);
		fsb_count(FSB_C_WORKER_ERRORS, 1);
		ws.error_backoff_until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ERROR_PAUSE_MS);
		/* rows we marked inflight may now be orphaned: re-queue them later */
		ws.recovery_needed = true;
		sync_forget_result();
		drop_finished();
	}
	PG_END_TRY();
}

static bool
pass_wanted(TimestampTz now)
{
	if (now < ws.error_backoff_until)
		return false;
	if (ws.finished != NIL || (ws.recovery_needed && ws.running == NIL))
		return true;
	/*
	 * A wake is for new jobs.  While nothing can be sent (no URL, sending
	 * paused) it only matters for what needs no sending; the rest waits for
	 * the timer, sparing the SIEM's inserts a transaction per commit.
	 */
	if (ws.wake && (claim_capacity(now) > 0 || fsb_deferred_logs_waiting() ||
					ticket_requests_waiting() || !ws.extension_present))
		return true;
	if (ws.extension_present && sync_wanted(now))
		return true;
	if (TimestampDifferenceExceeds(ws.last_pass, now, IDLE_CHECK_MS))
		return true;
	if (claim_capacity(now) == 0)
		return false;
	return ws.more_due || (ws.next_due != 0 && ws.next_due <= now);
}

static long
wait_timeout_ms(TimestampTz now)
{
	long		timeout = IDLE_CHECK_MS;
	TimestampTz wake_at = 0;

	if (ws.next_due != 0 && claim_capacity(now) > 0)
		wake_at = ws.next_due;
	if (ws.paused_until > now && (wake_at == 0 || ws.paused_until < wake_at))
		wake_at = ws.paused_until;
	if (ws.extension_present && sync_next_at() != 0 && (wake_at == 0 || sync_next_at() < wake_at))
		wake_at = sync_next_at();
	if (ws.error_backoff_until > now)
		wake_at = ws.error_backoff_until;
	if (wake_at != 0)
		timeout = Min(timeout, TimestampDifferenceMilliseconds(now, wake_at));
	return Max(0, timeout);
}

static void
reload_settings(void)
{
	const char *problem;

	ConfigReloadPending = false;
	ProcessConfigFile(PGC_SIGHUP);
	/* new settings deserve a fresh try at once */
	ws.paused_until = 0;
	ws.host_failures = 0;
	publish_pause(0);
	ws.wake = true;
	problem = fsb_url_problem(fsb_url);
	if (problem == NULL)
		ws.config_problem_logged = false;
	else if (!ws.config_problem_logged)
	{
		ereport(LOG,
				(errmsg("freescout_bridge: not sending to FreeScout: %s", problem),
				 errhint("Set freescout.url (and freescout.api_key) in postgresql.conf and reload.")));
		ws.config_problem_logged = true;
	}
}

void
freescout_worker_main(Datum main_arg)
{
	MemoryContext loop_cxt;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnection(fsb_database, NULL, 0);
	pgstat_report_appname(FSB_WORKER_TYPE);

	memset(&ws, 0, sizeof(ws));
	ws.recovery_needed = true;
	ws.wake = true;
	ws.jobs_cxt = AllocSetContextCreate(TopMemoryContext, "freescout_bridge jobs",
										ALLOCSET_DEFAULT_SIZES);
	loop_cxt = AllocSetContextCreate(TopMemoryContext, "freescout_bridge loop",
									 ALLOCSET_DEFAULT_SIZES);

	http_engine_start();
	publish_worker(true);
	before_shmem_exit(worker_exit, (Datum) 0);
	ereport(LOG, (errmsg("freescout_bridge worker started for database \"%s\"", fsb_database)));
	ConfigReloadPending = true;

	for (;;)
	{
		TimestampTz now;
		List	   *completed = NIL;

		MemoryContextSwitchTo(loop_cxt);
		MemoryContextReset(loop_cxt);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
			reload_settings();

		now = GetCurrentTimestamp();
		if (ticket_requests_waiting())
			ws.wake = true;
		if (pass_wanted(now))
		{
			database_pass_guarded(now);
			continue;			/* a pass may have finished jobs at once */
		}

		if (http_wait(wait_timeout_ms(now), &completed))
			ws.wake = true;
		handle_completions(completed);
	}
}
