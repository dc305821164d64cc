/*
 * shared_state.c
 *		The extension's one block of shared memory: where the worker can be
 *		woken, the ticket request slots, deferred log rows and counters.
 *
 * Nothing here holds a process-local pointer.  The worker is found through
 * its PGPROC number and woken by setting that PGPROC's latch, which lives in
 * shared memory too.
 */
#include "freescout_bridge.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"

FsbSharedState *fsb_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(FsbSharedState)));
	RequestNamedLWLockTranche(FSB_EXTENSION_NAME, 1);
}

static void
shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	fsb_shared = ShmemInitStruct(FSB_EXTENSION_NAME, sizeof(FsbSharedState), &found);
	if (!found)
	{
		memset(fsb_shared, 0, sizeof(FsbSharedState));
		fsb_shared->lock = &(GetNamedLWLockTranche(FSB_EXTENSION_NAME))->lock;
		fsb_shared->worker_procno = -1;
		ConditionVariableInit(&fsb_shared->answer_cv);
		for (int i = 0; i < FSB_NUM_COUNTERS; i++)
			pg_atomic_init_u64(&fsb_shared->counters[i], 0);
	}
	LWLockRelease(AddinShmemInitLock);
}

void
fsb_shared_state_request(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = shmem_startup;
}

bool
fsb_shared_state_available(void)
{
	return fsb_shared != NULL;
}

/*
 * Raises a clear error unless a worker can act for this backend now: the
 * library preloaded, the integration on and configured, the worker alive.
 */
void
fsb_require_worker(void)
{
	const char *problem = fsb_url_problem(fsb_url);
	pid_t		worker_pid;

	if (fsb_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("freescout_bridge is not loaded at server start"),
				 errdetail("FreeScout is reached by the freescout_bridge worker, which needs shared memory."),
				 errhint("Add freescout_bridge to shared_preload_libraries and restart PostgreSQL.")));
	if (!fsb_enabled)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the FreeScout integration is disabled"),
				 errhint("Set freescout.enabled = on and reload the configuration.")));
	if (problem != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("FreeScout is not configured"),
				 errdetail("%s.", problem),
				 errhint("Set freescout.url and freescout.api_key in postgresql.conf and reload.")));

	LWLockAcquire(fsb_shared->lock, LW_SHARED);
	worker_pid = fsb_shared->worker_pid;
	LWLockRelease(fsb_shared->lock);
	if (worker_pid == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the freescout_bridge worker is not running"),
				 errhint("Check the server log; the worker restarts by itself within seconds after a crash.")));
}

/*
 * Sets the worker's latch.  Reading worker_procno without the lock is fine:
 * an int read is atomic, and a stale value at worst wakes a process that has
 * since exited, whose latch wakes are harmless.
 */
void
fsb_wake_worker(void)
{
	int			procno;

	if (fsb_shared == NULL)
		return;
	procno = fsb_shared->worker_procno;
	if (procno >= 0)
		SetLatch(&ProcGlobal->allProcs[procno].procLatch);
}

void
fsb_count(FsbCounter counter, uint64 amount)
{
	if (fsb_shared != NULL)
		pg_atomic_fetch_add_u64(&fsb_shared->counters[counter], amount);
}

/*
 * Keeps a log row for the worker to write in its own transaction.  Used when
 * the caller's transaction is about to roll back but the attempt must stay on
 * record (a forged webhook).  Returns false when the buffer is full or there
 * is no shared memory; the caller then still raises its error.
 */
/* Are log rows waiting for the worker to write them? */
bool
fsb_deferred_logs_waiting(void)
{
	bool		waiting = false;

	LWLockAcquire(fsb_shared->lock, LW_SHARED);
	for (int i = 0; i < FSB_DEFERRED_LOGS && !waiting; i++)
		waiting = fsb_shared->deferred_logs[i].used;
	LWLockRelease(fsb_shared->lock);
	return waiting;
}

bool
fsb_defer_log(const char *event_type, const char *error, const char *detail)
{
	bool		stored = false;

	if (fsb_shared == NULL)
		return false;

	LWLockAcquire(fsb_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < FSB_DEFERRED_LOGS; i++)
	{
		DeferredLogEntry *entry = &fsb_shared->deferred_logs[i];

		if (entry->used)
			continue;
		strlcpy(entry->event_type, event_type, sizeof(entry->event_type));
		strlcpy(entry->error, error ? error : "", sizeof(entry->error));
		strlcpy(entry->detail, detail ? detail : "", sizeof(entry->detail));
		entry->used = true;
		stored = true;
		break;
	}
	LWLockRelease(fsb_shared->lock);

	if (stored)
		fsb_wake_worker();
	return stored;
}
