/*
 * ticket_request.c
 *		freescout_create_ticket() and freescout_create_incident_ticket(): the
 *		SIEM's "Create ticket" button, answered synchronously.
 *
 * The calling backend never talks to FreeScout itself.  It hands the request
 * to the worker through a shared-memory slot and sleeps on a condition
 * variable; the worker attaches it to the target's create job (making one if
 * needed), so a ticket that is already being created is not created twice,
 * and the same exactly-once machinery covers both paths.  The backend then
 * reads the committed ticket row and returns it.
 */
#include "freescout_bridge.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(freescout_create_ticket);
PG_FUNCTION_INFO_V1(freescout_create_incident_ticket);

static const char *
kind_name(char kind)
{
	return kind == 'i' ? "incident" : "alert";
}

/* Raises "no such alert" unless the target row exists. */
static void
check_target_exists(char kind, int64 id)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(id)};
	char	   *query = psprintf("SELECT 1 FROM %s WHERE %s = $1",
								 fsb_qualified(kind == 'i' ? "incidents" : "alerts"),
								 kind == 'i' ? "incident_id" : "alert_id");

	if (SPI_execute_with_args(query, 1, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up %s " INT64_FORMAT, kind_name(kind), id);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("%s " INT64_FORMAT " does not exist", kind_name(kind), id),
				 errhint("Pass the %s_id of an existing %s.", kind_name(kind), kind_name(kind))));
}

static int
claim_slot(char kind, int64 id)
{
	int			slot_no = -1;

	LWLockAcquire(fsb_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < FSB_REQUEST_SLOTS; i++)
	{
		TicketRequestSlot *slot = &fsb_shared->slots[i];

		if (slot->state != TRS_FREE)
			continue;
		memset(slot->message, 0, sizeof(slot->message));
		memset(slot->detail, 0, sizeof(slot->detail));
		slot->generation++;
		slot->target_kind = kind;
		slot->target_id = id;
		slot->outbox_id = 0;
		slot->ticket_id = 0;
		slot->sqlstate = 0;
		slot->state = TRS_SUBMITTED;
		slot_no = i;
		break;
	}
	LWLockRelease(fsb_shared->lock);

	if (slot_no < 0)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many ticket requests are waiting for FreeScout"),
				 errdetail("At most %d requests can wait at once.", FSB_REQUEST_SLOTS),
				 errhint("Try again in a moment.")));
	return slot_no;
}

static void
abandon_slot(int slot_no)
{
	TicketRequestSlot *slot = &fsb_shared->slots[slot_no];

	LWLockAcquire(fsb_shared->lock, LW_EXCLUSIVE);
	slot->state = (slot->state == TRS_DONE) ? TRS_FREE : TRS_ABANDONED;
	LWLockRelease(fsb_shared->lock);
}

/*
 * Waits for the worker's answer.  A cancel or timeout leaves the request to
 * the worker (the job stays queued) and frees the slot when it finishes.
 */
static TicketRequestSlot
wait_for_answer(int slot_no)
{
	TicketRequestSlot *slot = &fsb_shared->slots[slot_no];
	TicketRequestSlot answer;
	/* a lookup, its pages and the create, with room to spare */
	long		budget_ms = 3L * fsb_request_timeout_ms + 5000;
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), budget_ms);
	bool		done = false;

	PG_TRY();
	{
		ConditionVariablePrepareToSleep(&fsb_shared->answer_cv);
		for (;;)
		{
			LWLockAcquire(fsb_shared->lock, LW_EXCLUSIVE);
			if (slot->state == TRS_DONE)
			{
				answer = *slot;
				slot->state = TRS_FREE;
				done = true;
			}
			LWLockRelease(fsb_shared->lock);
			if (done || GetCurrentTimestamp() >= deadline)
				break;
			ConditionVariableTimedSleep(&fsb_shared->answer_cv, 100, PG_WAIT_EXTENSION);
		}
		ConditionVariableCancelSleep();
	}
	PG_CATCH();
	{
		ConditionVariableCancelSleep();
		abandon_slot(slot_no);
		PG_RE_THROW();
	}
	PG_END_TRY();

	if (!done)
	{
		abandon_slot(slot_no);
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("timed out after %ld ms waiting for FreeScout", budget_ms),
				 errdetail("The ticket request stays queued and will be completed by the worker."),
				 errhint("Call the function again later to get the ticket.")));
	}
	return answer;
}

static void
raise_answer_error(char kind, int64 id, const TicketRequestSlot *answer)
{
	const char *hint;

	switch (answer->sqlstate)
	{
		case ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION:
			hint = "Check freescout.api_key.";
			break;
		case ERRCODE_CONNECTION_FAILURE:
			hint = "The request stays queued and is retried with backoff; freescout_sync_log has each attempt.";
			break;
		default:
			hint = "Check freescout.mailbox_id and the request in freescout_sync_log; the job is in freescout_outbox with state 'dead'.";
	}
	ereport(ERROR,
			(errcode(answer->sqlstate),
			 errmsg("could not create the FreeScout ticket for %s " INT64_FORMAT ": %s",
					kind_name(kind), id, answer->message),
			 answer->detail[0] ? errdetail("%s", answer->detail) : 0,
			 errhint("%s", hint)));
}

static Datum
ticket_row(FunctionCallInfo fcinfo, int64 ticket_id)
{
	TupleDesc	tupdesc;
	Oid			types[1] = {INT4OID};
	Datum		values[1] = {Int32GetDatum((int32) ticket_id)};
	char	   *query = psprintf("SELECT * FROM %s WHERE ticket_id = $1",
								 fsb_qualified("freescout_tickets"));

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "freescout_create_ticket must return a composite type");
	/* not read-only: a new snapshot, which sees the worker's commit */
	if (SPI_execute_with_args(query, 1, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read ticket " INT64_FORMAT, ticket_id);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("ticket " INT64_FORMAT " vanished before it could be returned", ticket_id),
				 errdetail("The worker committed it, but this transaction cannot see it."),
				 errhint("Call the function in READ COMMITTED isolation, outside a longer transaction.")));
	return PointerGetDatum(SPI_returntuple(SPI_tuptable->vals[0], BlessTupleDesc(tupdesc)));
}

static int64
existing_ticket(char kind, int64 id)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(id)};
	char	   *query = kind == 'a' ?
		psprintf("SELECT COALESCE((SELECT t.ticket_id FROM %s t WHERE t.alert_id = $1), "
				 "(SELECT a.freescout_ticket_id FROM %s a WHERE a.alert_id = $1))",
				 fsb_qualified("freescout_tickets"), fsb_qualified("alerts")) :
		psprintf("SELECT ticket_id FROM %s WHERE incident_id = $1",
				 fsb_qualified("freescout_tickets"));
	bool		isnull = true;
	Datum		d;

	if (SPI_execute_with_args(query, 1, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up the ticket of %s " INT64_FORMAT, kind_name(kind), id);
	if (SPI_processed == 0)
		return 0;
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? 0 : DatumGetInt32(d);
}

static Datum
create_ticket(FunctionCallInfo fcinfo, char kind)
{
	int64		id = PG_GETARG_INT64(0);
	int64		ticket_id;
	int			slot_no;
	TicketRequestSlot answer;
	Datum		result;

	SPI_connect();
	check_target_exists(kind, id);
	ticket_id = existing_ticket(kind, id);
	if (ticket_id == 0)
	{
		fsb_require_worker();
		slot_no = claim_slot(kind, id);
		fsb_wake_worker();
		answer = wait_for_answer(slot_no);
		if (answer.ticket_id == 0)
			raise_answer_error(kind, id, &answer);
		ticket_id = answer.ticket_id;
	}
	result = ticket_row(fcinfo, ticket_id);
	SPI_finish();
	return result;
}

Datum
freescout_create_ticket(PG_FUNCTION_ARGS)
{
	return create_ticket(fcinfo, 'a');
}

Datum
freescout_create_incident_ticket(PG_FUNCTION_ARGS)
{
	return create_ticket(fcinfo, 'i');
}
