/*
 * freescout_bridge.h
 *		Declarations shared by the files of the freescout_bridge extension.
 *
 * The extension is split by responsibility; each section below belongs to
 * one source file, named in its heading.
 */
#ifndef FREESCOUT_BRIDGE_H
#define FREESCOUT_BRIDGE_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "nodes/pg_list.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/lwlock.h"

#define FSB_EXTENSION_NAME	"freescout_bridge"
#define FSB_WORKER_TYPE		"freescout_bridge worker"

/* ---------- settings.c: GUCs ---------- */

extern bool fsb_enabled;
extern char *fsb_url;
extern char *fsb_api_key;
extern int	fsb_mailbox_id;
extern bool fsb_auto_create_on_alert;
extern int	fsb_auto_create_severity_min;
extern bool fsb_auto_create_on_incident;
extern int	fsb_sync_interval;
extern char *fsb_webhook_secret;
extern char *fsb_database;
extern int	fsb_bot_user_id;
extern char *fsb_customer_email;
extern char *fsb_siem_url;
extern int	fsb_max_concurrency;
extern int	fsb_request_timeout_ms;
extern int	fsb_max_attempts;
extern bool fsb_allow_http;
extern char *fsb_custom_fields;
extern int	fsb_webhook_max_bytes;

/* Why the configured URL cannot be used, or NULL when it can. */
extern const char *fsb_url_problem(const char *url);

/* ---------- shared_state.c: the one struct in shared memory ---------- */

/*
 * A synchronous ticket request from a backend (freescout_create_ticket) to
 * the worker.  Backends fill a free slot and sleep on the condition variable;
 * the worker answers in the same slot.  Only plain values live here: no
 * pointers, so any process may read a slot safely.
 */
typedef enum TicketRequestState
{
	TRS_FREE = 0,
	TRS_SUBMITTED,				/* waiting for the worker */
	TRS_QUEUED,					/* the worker attached it to an outbox job */
	TRS_DONE,					/* result fields are valid */
	TRS_ABANDONED				/* requester gave up; worker frees on finish */
} TicketRequestState;

#define FSB_REQUEST_SLOTS	64
#define FSB_MESSAGE_LEN		256

typedef struct TicketRequestSlot
{
	TicketRequestState state;
	uint64		generation;		/* bumps on reuse, so stale answers are ignored */
	char		target_kind;	/* 'a' alert, 'i' incident */
	int64		target_id;
	int64		outbox_id;		/* job carrying the request, once queued */
	/* result */
	int64		ticket_id;		/* > 0 on success */
	int			sqlstate;		/* ERRCODE_* on failure */
	char		message[FSB_MESSAGE_LEN];
	char		detail[FSB_MESSAGE_LEN];
} TicketRequestSlot;

/*
 * Log rows a backend must keep even though its transaction rolls back (a
 * forged webhook).  The worker writes them in its own transaction.
 */
#define FSB_DEFERRED_LOGS	64

typedef struct DeferredLogEntry
{
	bool		used;
	char		event_type[48];
	char		error[FSB_MESSAGE_LEN];
	char		detail[FSB_MESSAGE_LEN];
} DeferredLogEntry;

typedef enum FsbCounter
{
	FSB_C_REQUESTS = 0,
	FSB_C_REQUEST_OK,
	FSB_C_REQUEST_FAILED,
	FSB_C_RETRIES_SCHEDULED,
	FSB_C_DEAD_LETTERED,
	FSB_C_TICKETS_CREATED,
	FSB_C_TICKETS_ADOPTED,
	FSB_C_JOBS_ENQUEUED_WAKES,
	FSB_C_WEBHOOKS_APPLIED,
	FSB_C_WEBHOOKS_IGNORED,
	FSB_C_WEBHOOKS_REJECTED,
	FSB_C_SYNC_RUNS,
	FSB_C_WORKER_ERRORS,
	FSB_C_LATENCY_SUM_US,
	FSB_NUM_COUNTERS
} FsbCounter;

typedef struct FsbSharedState
{
	LWLock	   *lock;			/* protects slots, deferred logs, worker fields */
	pid_t		worker_pid;		/* 0 when no worker runs */
	int			worker_procno;	/* index into ProcGlobal->allProcs, -1 if none */
	uint64		sync_requested;	/* generation a backend asked for */
	uint64		sync_completed; /* generation the worker finished */
	char		sync_result[FSB_MESSAGE_LEN];	/* JSON of the last run */
	TimestampTz circuit_open_until; /* FreeScout unreachable: sending paused */
	ConditionVariable answer_cv;	/* broadcast when a slot becomes DONE */
	TicketRequestSlot slots[FSB_REQUEST_SLOTS];
	DeferredLogEntry deferred_logs[FSB_DEFERRED_LOGS];
	pg_atomic_uint64 counters[FSB_NUM_COUNTERS];
} FsbSharedState;

extern FsbSharedState *fsb_shared;

extern void fsb_shared_state_request(void);
extern void fsb_shared_state_startup(void);
extern bool fsb_shared_state_available(void);
extern void fsb_require_worker(void);
extern void fsb_wake_worker(void);
extern void fsb_count(FsbCounter counter, uint64 amount);
extern bool fsb_deferred_logs_waiting(void);
extern bool fsb_defer_log(const char *event_type, const char *error,
						  const char *detail);

/* ---------- sql_helpers.c ---------- */

extern bool fsb_extension_lookup(Oid *schema, Oid *owner);
extern Oid	fsb_extension_schema(void);
extern const char *fsb_schema_quoted(void);
extern char *fsb_qualified(const char *relname);
extern int	fsb_spi_run(const char *sql, int nargs, Oid *types, Datum *values,
						const char *nulls, int expect);

/* ---------- enqueue.c: the insert path (backends) ---------- */

extern void fsb_request_wake_at_commit(void);

/* ---------- worker.c ---------- */

extern PGDLLEXPORT void freescout_worker_main(Datum main_arg);
extern void fsb_register_worker(void);

/* ---------- json_util.c: cJSON on palloc, and small helpers ---------- */

struct cJSON;
extern void fsb_json_init(void);
extern const char *fsb_json_string(const struct cJSON *obj, const char *key);
extern bool fsb_json_int64(const struct cJSON *obj, const char *key, int64 *out);
extern char *fsb_json_print(const struct cJSON *item);
extern char *fsb_json_escape_for_log(const char *s);

#endif							/* FREESCOUT_BRIDGE_H */
