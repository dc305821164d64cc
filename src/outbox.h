/*
 * outbox.h
 *		Jobs of the durable outbox, as the worker holds them in memory, and
 *		the SQL side of their life (claim, record, recover).
 */
#ifndef FSB_OUTBOX_H
#define FSB_OUTBOX_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "freescout_api.h"
#include "http_engine.h"
#include "nodes/pg_list.h"

typedef enum JobKind
{
	JOB_CREATE,					/* POST a conversation (lookup first on retry) */
	JOB_TAGS,					/* PUT .../tags */
	JOB_FIELDS,					/* PUT .../custom_fields */
	JOB_STATUS,					/* PUT status from the SIEM */
	JOB_NOTE,					/* POST a note thread from the SIEM */
	JOB_LINK					/* alert joined an incident: link + note */
} JobKind;

typedef enum JobOutcome
{
	OUTCOME_RUNNING = 0,
	OUTCOME_DONE,				/* delete the job, apply its effect */
	OUTCOME_SKIPPED,			/* nothing to do (ticket exists, no mapping) */
	OUTCOME_RETRY,				/* back into the queue after a backoff */
	OUTCOME_POSTPONE,			/* waits for another job; not a failure */
	OUTCOME_DEAD				/* permanent failure, kept with its reason */
} JobOutcome;

/* One HTTP exchange, kept for its freescout_sync_log row. */
typedef struct CallRecord
{
	const char *event_type;
	const char *method;
	char	   *path;
	long		http_status;
	double		latency_ms;
	bool		success;
	char	   *error;
} CallRecord;

typedef struct OutboxJob
{
	/* from the outbox row */
	int64		id;
	JobKind		kind;
	char		target_kind;	/* 'a' alert, 'i' incident */
	int64		target_id;
	int			attempts;		/* including the current one */
	bool		needs_lookup;	/* an earlier attempt may have created it */
	TimestampTz first_claimed_at;
	char	   *payload_json;	/* job parameters, NULL if none */

	/* context loaded at claim time */
	char	   *row_json;		/* to_jsonb() of the alert or incident */
	int64		ticket_id;		/* freescout_tickets row, 0 if none */
	int64		conversation_id;	/* FreeScout id of that ticket */
	char	   *siem_status;	/* for JOB_STATUS: current SIEM status */
	char	   *freescout_status;	/* for JOB_STATUS: mapped status, or NULL */
	int64		worklog_id;		/* for JOB_NOTE */
	char	   *note_html;		/* for JOB_NOTE: rendered at claim */
	bool		already_linked; /* for JOB_LINK */

	/* progress, in memory only */
	TicketContent *content;
	int			lookup_page;
	HttpRequest *request;		/* in flight, or NULL */
	TimestampTz started_at;		/* when the worker began sending it */
	List	   *calls;			/* of CallRecord */
	bool		from_manual_request;

	/* outcome */
	JobOutcome	outcome;
	char	   *error;
	long		http_status;
	bool		uncertain;		/* the last attempt may have taken effect */
	bool		host_unavailable;	/* pause all sending (down, 429, 503, 401) */
	int			retry_after_s;	/* -1 unless the server asked */
	int			error_sqlstate; /* for a waiting freescout_create_ticket() */
	FsConversationRef conversation; /* JOB_CREATE result */
	bool		adopted;		/* found by lookup instead of created */
	int64		thread_id;		/* JOB_NOTE / JOB_LINK result */
} OutboxJob;

/* outbox.c */
extern bool outbox_begin(void);
extern void outbox_end(bool durable);
extern const char *outbox_schema(void);
extern int	outbox_recover_inflight(void);
extern List *outbox_claim(int limit, List *busy_targets, MemoryContext jobs_cxt);
extern void outbox_record(List *finished);
extern TimestampTz outbox_next_due(bool future_only);
extern int64 outbox_queue_ticket_request(char target_kind, int64 target_id,
										 int64 *existing_ticket);
extern void outbox_write_deferred_logs(void);
extern int64 outbox_ticket_for_target(char target_kind, int64 target_id);

/* delivery.c */
extern HttpRequest *delivery_start(OutboxJob *job);
extern HttpRequest *delivery_continue(OutboxJob *job, HttpRequest *done);
extern long delivery_backoff_ms(int attempts);

#endif
