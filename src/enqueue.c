/*
 * enqueue.c
 *		The insert path, as seen from an ordinary backend: after the SIEM's
 *		transaction that queued outbox rows commits, wake the worker.
 *
 * Why not LISTEN/NOTIFY: a background worker has no client to deliver
 * notifications to, and a LISTEN it never drains pins the cluster-wide
 * notification queue until it fills.  Instead the statement trigger that
 * fills the outbox calls freescout_wake_at_commit(), which arms a commit
 * callback; at commit we set the worker's latch.  The worker then sees the
 * committed rows within microseconds, and a rolled-back insert wakes nobody.
 * The worker also polls the outbox on a timer, so a wake lost in a crash
 * only delays work, it never loses it.
 */
#include "freescout_bridge.h"

#include "access/xact.h"
#include "fmgr.h"

PG_FUNCTION_INFO_V1(freescout_wake_at_commit);

static bool callback_registered = false;
static bool wake_at_commit = false;

static void
wake_on_commit(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (wake_at_commit)
			{
				wake_at_commit = false;
				fsb_count(FSB_C_JOBS_ENQUEUED_WAKES, 1);
				fsb_wake_worker();
			}
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			wake_at_commit = false;
			break;
		default:
			break;
	}
}

void
fsb_request_wake_at_commit(void)
{
	if (!callback_registered)
	{
		RegisterXactCallback(wake_on_commit, NULL);
		callback_registered = true;
	}
	wake_at_commit = true;
}

Datum
freescout_wake_at_commit(PG_FUNCTION_ARGS)
{
	fsb_request_wake_at_commit();
	PG_RETURN_VOID();
}
