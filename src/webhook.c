/*
 * webhook.c
 *		FreeScout -> SIEM: verifying webhooks and applying a conversation's
 *		state (status, assignee, threads) to the SIEM.
 *
 * Two formats arrive.  Real FreeScout posts the bare conversation with the
 * event in X-FreeScout-Event and a base64 HMAC-SHA1 signature; the
 * integration spec describes an {event, data:{conversation}} envelope signed
 * with hex HMAC-SHA256.  Both are told apart by form.
 *
 * Applying is idempotent and order-safe, because FreeScout retries with the
 * original payload and delivers out of order: threads are keyed by their
 * FreeScout id, and a conversation older (updatedAt) than what was applied
 * does not overwrite status or assignee.  The same code applies what the
 * reconciliation pulls (sync.c), in the worker.
 *
 * Echoes: while applying, freescout_applying_remote() is true so the SIEM
 * triggers do not queue the change back; and a FreeScout status that the
 * SIEM status already maps to changes nothing, which absorbs the webhooks
 * FreeScout fires for the bridge's own PUTs.
 */
#include "freescout_bridge.h"
#include "freescout_api.h"
#include "render.h"
#include "webhook.h"

#include <cjson/cJSON.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/lsyscache.h"

PG_FUNCTION_INFO_V1(freescout_applying_remote);
PG_FUNCTION_INFO_V1(freescout_webhook);
PG_FUNCTION_INFO_V1(freescout_webhook_bytes);

static bool applying_remote = false;

Datum
freescout_applying_remote(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(applying_remote);
}

/* ---------- signature ---------- */

static bool
is_hex(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (!isxdigit((unsigned char) s[i]))
			return false;
	return true;
}

/*
 * Compares the header with the HMAC of the raw body in constant time.  The
 * form of the header picks the scheme: 28 base64 characters are the real
 * module's HMAC-SHA1, 64 hex digits (optionally "sha256=") the spec's
 * HMAC-SHA256.
 */
bool
webhook_signature_valid(const char *body, size_t body_len, const char *signature,
						const char *secret, const char **scheme)
{
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int mac_len = 0;
	char		expected[2 * EVP_MAX_MD_SIZE + 1];
	size_t		sig_len;
	bool		valid;

	*scheme = "none";
	if (signature == NULL || secret == NULL || secret[0] == '\0')
		return false;
	while (*signature == ' ')
		signature++;
	if (pg_strncasecmp(signature, "sha256=", 7) == 0)
		signature += 7;
	sig_len = strlen(signature);
	while (sig_len > 0 && signature[sig_len - 1] == ' ')
		sig_len--;

	if (sig_len == 64 && is_hex(signature, 64))
	{
		*scheme = "hmac-sha256-hex";
		HMAC(EVP_sha256(), secret, (int) strlen(secret),
			 (const unsigned char *) body, body_len, mac, &mac_len);
		for (unsigned int i = 0; i < mac_len; i++)
			snprintf(expected + 2 * i, 3, "%02x", mac[i]);
		/* hex digits compare case-insensitively */
		{
			char		lowered[65];

			for (int i = 0; i < 64; i++)
				lowered[i] = (char) tolower((unsigned char) signature[i]);
			lowered[64] = '\0';
			valid = CRYPTO_memcmp(expected, lowered, 64) == 0;
		}
	}
	else if (sig_len == 28)
	{
		*scheme = "hmac-sha1-base64";
		HMAC(EVP_sha1(), secret, (int) strlen(secret),
			 (const unsigned char *) body, body_len, mac, &mac_len);
		EVP_EncodeBlock((unsigned char *) expected, mac, (int) mac_len);
		valid = CRYPTO_memcmp(expected, signature, 28) == 0;
	}
	else
		valid = false;

	explicit_bzero(mac, sizeof(mac));
	explicit_bzero(expected, sizeof(expected));
	return valid;
}

/* ---------- reading the payload ---------- */

/* FreeScout status as a string; the spec's integers 1-4 are accepted too. */
static const char *
conversation_status(const cJSON *conversation)
{
	const cJSON *status = cJSON_GetObjectItemCaseSensitive(conversation, "status");

	if (cJSON_IsString(status))
		return fsapi_valid_status(status->valuestring) ? status->valuestring : NULL;
	if (cJSON_IsNumber(status))
	{
		switch (status->valueint)
		{
			case 1:
				return "active";
			case 2:
				return "pending";
			case 3:
				return "closed";
			case 4:
				return "spam";
		}
	}
	return NULL;
}

static char *
person_name(const cJSON *person)
{
	const char *first = fsb_json_string(person, "firstName");
	const char *last = fsb_json_string(person, "lastName");

	if (first == NULL && last == NULL)
		return NULL;
	return psprintf("%s%s%s", first ? first : "", (first && last) ? " " : "", last ? last : "");
}

/* ---------- applying ---------- */

typedef struct TicketRow
{
	int64		ticket_id;
	int64		alert_id;
	int64		incident_id;
	char	   *status;
	TimestampTz updated_at;		/* FreeScout's updatedAt we applied, or NO_DATE */
	int64		last_thread_id; /* newest thread id we applied */
	int64		assignee_id;
} TicketRow;

static const char *schema_q;	/* quoted schema, for the current call */

#define NO_DATE DT_NOBEGIN		/* "no usable updatedAt" */

static bool
column_exists(const char *relname, const char *column)
{
	Oid			rel = get_relname_relid(relname, fsb_extension_schema());

	return OidIsValid(rel) && get_attnum(rel, column) != InvalidAttrNumber;
}

static bool
find_ticket(int64 conversation_id, TicketRow *t)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(conversation_id)};
	bool		isnull;

	/* the row lock serialises two deliveries for one conversation */
	fsb_spi_run(psprintf("SELECT ticket_id, alert_id, incident_id, status, "
					 "freescout_updated_at, assignee_id, freescout_last_thread_id "
					 "FROM %s.freescout_tickets WHERE freescout_id = $1 FOR UPDATE", schema_q),
			1, types, values, NULL, SPI_OK_SELECT);
	if (SPI_processed == 0)
		return false;
	t->ticket_id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	t->alert_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	if (isnull)
		t->alert_id = 0;
	t->incident_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	if (isnull)
		t->incident_id = 0;
	t->status = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4);
	t->updated_at = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5, &isnull));
	if (isnull)
		t->updated_at = NO_DATE;
	t->assignee_id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 6, &isnull));
	if (isnull)
		t->assignee_id = 0;
	t->last_thread_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 7, &isnull));
	if (isnull)
		t->last_thread_id = 0;
	return true;
}

/*
 * FreeScout's dates, "2024-05-01T10:00:00Z" (an offset or fractional
 * seconds are accepted too).  Anything else, an impossible date included, is
 * "no date": a signed payload with a bad date is still applied, not refused.
 */
static bool
parse_iso_timestamp(const char *text, TimestampTz *out)
{
	struct pg_tm tm;
	int			consumed = 0;
	int			offset_west = 0;
	const char *p;

	if (text == NULL)
		return false;
	memset(&tm, 0, sizeof(tm));
	if (sscanf(text, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
			   &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &consumed) != 6 || consumed != 19)
		return false;
	if (tm.tm_year < 1970 || tm.tm_year > 9999 || tm.tm_mon < 1 || tm.tm_mon > 12 ||
		tm.tm_mday < 1 || tm.tm_mday > day_tab[isleap(tm.tm_year)][tm.tm_mon - 1] ||
		tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 59)
		return false;
	p = text + consumed;
	if (*p == '.')
		for (p++; isdigit((unsigned char) *p); p++)
			;
	if (*p == 'Z' && p[1] == '\0')
		offset_west = 0;
	else if ((*p == '+' || *p == '-') && isdigit((unsigned char) p[1]) && isdigit((unsigned char) p[2]))
	{
		int			hours = (p[1] - '0') * 10 + (p[2] - '0');
		const char *m = p + 3 + (p[3] == ':');
		int			minutes = 0;

		if (isdigit((unsigned char) m[0]) && isdigit((unsigned char) m[1]))
		{
			minutes = (m[0] - '0') * 10 + (m[1] - '0');
			m += 2;
		}
		if (*m != '\0' || hours > 14 || minutes > 59)
			return false;
		offset_west = (*p == '+' ? -1 : 1) * (hours * 3600 + minutes * 60);
	}
	else
		return false;
	return tm2timestamp(&tm, 0, &offset_west, out) == 0;
}

/*
 * Is this snapshot older than what we applied?  FreeScout's updatedAt has
 * whole seconds, so within one second the newest thread id decides: every
 * change (reply, note, status, assignment) adds a thread.
 */
static bool
is_stale(const TicketRow *t, TimestampTz updated_at, int64 last_thread_id)
{
	if (updated_at == NO_DATE || t->updated_at == NO_DATE)
		return false;
	return updated_at < t->updated_at ||
		(updated_at == t->updated_at && last_thread_id < t->last_thread_id);
}

/* The newest thread id in a snapshot, lineitems included; 0 if none. */
static int64
newest_thread_id(const cJSON *threads)
{
	const cJSON *thread;
	int64		newest = 0;

	cJSON_ArrayForEach(thread, threads)
	{
		int64		id;

		if (fsb_json_int64(thread, "id", &id) && id > newest)
			newest = id;
	}
	return newest;
}

/*
 * FreeScout closed -> SIEM "resolved" (resolution "resolved"); active or
 * pending while the SIEM has it closed -> "acknowledged" (a reopen).  Rows
 * whose SIEM status already maps to the FreeScout status are left alone.
 */
static int
apply_status(const TicketRow *t, const char *fs_status)
{
	const char *new_status;
	const char *condition;
	Oid			types[2] = {TEXTOID, INT8OID};
	Datum		values[2];
	int			changed = 0;

	if (strcmp(fs_status, "closed") == 0)
	{
		new_status = "resolved";
		condition = "IS DISTINCT FROM 'closed'";
	}
	else if (strcmp(fs_status, "active") == 0 || strcmp(fs_status, "pending") == 0)
	{
		new_status = "acknowledged";
		condition = "= 'closed'";
	}
	else
		return 0;				/* spam: nothing in the SIEM means that */

	values[0] = CStringGetTextDatum(new_status);
	values[1] = Int64GetDatum(t->alert_id ? t->alert_id : t->incident_id);

#define SET_STATUS(rel, where) \
	fsb_spi_run(psprintf("UPDATE %1$s.%2$s x SET status = $1%3$s WHERE %4$s AND " \
					 "(SELECT m.freescout_status FROM %1$s.freescout_status_map m " \
					 " WHERE m.siem_status = x.status::text) %5$s", \
					 schema_q, rel, \
					 column_exists(rel, "resolution") ? \
					 ", resolution = CASE WHEN $1 = 'resolved' THEN 'resolved' ELSE x.resolution END" : "", \
					 where, condition), \
			2, types, values, NULL, SPI_OK_UPDATE)

	if (t->alert_id)
		changed += SET_STATUS("alerts", "x.alert_id = $2");
	else
	{
		changed += SET_STATUS("incidents", "x.incident_id = $2");
		if (column_exists("alerts", "incident_id"))
			changed += SET_STATUS("alerts", "x.incident_id = $2");
	}
#undef SET_STATUS
	return changed;
}

static void
update_ticket(const TicketRow *t, const char *status, TimestampTz updated_at,
			  int64 last_thread_id, bool set_assignee, int64 assignee_id,
			  const char *assignee_name)
{
	Oid			types[7] = {INT4OID, TEXTOID, TIMESTAMPTZOID, BOOLOID, INT4OID, TEXTOID, INT8OID};
	Datum		values[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};

	values[0] = Int32GetDatum((int32) t->ticket_id);
	values[1] = status ? CStringGetTextDatum(status) : (Datum) 0;
	nulls[1] = status ? ' ' : 'n';
	values[2] = TimestampTzGetDatum(updated_at);
	nulls[2] = updated_at != NO_DATE ? ' ' : 'n';
	values[3] = BoolGetDatum(set_assignee);
	values[4] = Int32GetDatum((int32) assignee_id);
	nulls[4] = assignee_id ? ' ' : 'n';
	/* the column is varchar(200): a longer name is clipped, not refused */
	values[5] = assignee_name ?
		PointerGetDatum(cstring_to_text_with_len(assignee_name,
												 pg_mbcliplen(assignee_name, strlen(assignee_name), 200))) :
		(Datum) 0;
	nulls[5] = assignee_name ? ' ' : 'n';
	values[6] = Int64GetDatum(last_thread_id);
	/* the caller checked the snapshot is not stale: it is the newest */
	fsb_spi_run(psprintf("UPDATE %s.freescout_tickets SET "
					 " status = COALESCE($2, status), "
					 " freescout_updated_at = COALESCE($3, freescout_updated_at), "
					 " freescout_last_thread_id = GREATEST(freescout_last_thread_id, NULLIF($7, 0)), "
					 " assignee_id = CASE WHEN $4 THEN $5 ELSE assignee_id END, "
					 " assignee_name = CASE WHEN $4 THEN $6 ELSE assignee_name END, "
					 " updated_at = now(), synced_at = now() "
					 "WHERE ticket_id = $1", schema_q),
			7, types, values, nulls, SPI_OK_UPDATE);
}

/* Our own threads come back in webhooks: recognise them by their markers. */
static bool
thread_is_ours(const char *body, int64 thread_id)
{
	const char *note;

	if (strstr(body, "Reference: freescout_bridge ") != NULL ||
		strstr(body, "freescout_bridge link:alert:") != NULL)
		return true;
	note = strstr(body, "freescout_bridge note:");
	if (note != NULL)
	{
		Oid			types[2] = {INT8OID, INT8OID};
		Datum		values[2] = {Int64GetDatum(strtoll(note + strlen("freescout_bridge note:"), NULL, 10)),
		Int64GetDatum(thread_id)};

		/* remember which FreeScout thread our note became */
		fsb_spi_run(psprintf("UPDATE %s.freescout_worklog SET freescout_thread_id = $2 "
						 "WHERE worklog_id = $1 AND freescout_thread_id IS NULL", schema_q),
				2, types, values, NULL, SPI_OK_UPDATE);
		return true;
	}
	return false;
}

static int
insert_worklog(const TicketRow *t, int64 thread_id, const char *type,
			   const char *author, const char *text, const char *created_at)
{
	Oid			types[8] = {INT8OID, INT8OID, INT4OID, INT8OID, TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID};
	TimestampTz created;
	Datum		values[8];
	char		nulls[8] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};

	values[0] = Int64GetDatum(t->alert_id);
	nulls[0] = t->alert_id ? ' ' : 'n';
	values[1] = Int64GetDatum(t->incident_id);
	nulls[1] = t->incident_id ? ' ' : 'n';
	values[2] = Int32GetDatum((int32) t->ticket_id);
	values[3] = Int64GetDatum(thread_id);
	nulls[3] = thread_id ? ' ' : 'n';
	values[4] = CStringGetTextDatum(type);
	values[5] = author ? CStringGetTextDatum(author) : (Datum) 0;
	nulls[5] = author ? ' ' : 'n';
	values[6] = CStringGetTextDatum(text);
	nulls[7] = parse_iso_timestamp(created_at, &created) ? ' ' : 'n';
	values[7] = TimestampTzGetDatum(created);

	/*
	 * With a thread id, the unique key makes a replay a no-op.  The spec's
	 * envelope has none, so the same author, time and text count as a replay.
	 */
	return fsb_spi_run(psprintf("INSERT INTO %1$s.freescout_worklog "
							"(alert_id, incident_id, ticket_id, direction, freescout_thread_id, "
							" thread_type, author, body, created_at) "
							"SELECT $1, $2, $3, 'from_freescout', $4, $5, $6, $7, COALESCE($8, now()) "
							"WHERE $4 IS NOT NULL OR NOT EXISTS (SELECT 1 FROM %1$s.freescout_worklog w "
							"  WHERE w.ticket_id = $3 AND w.body = $7 AND w.freescout_thread_id IS NULL "
							"    AND w.direction = 'from_freescout') "
							"ON CONFLICT (freescout_thread_id) DO NOTHING",
							schema_q),
				   8, types, values, nulls, SPI_OK_INSERT);
}

static int
apply_threads(const TicketRow *t, const cJSON *threads)
{
	const cJSON *thread;
	int			added = 0;

	cJSON_ArrayForEach(thread, threads)
	{
		const char *type = fsb_json_string(thread, "type");
		const char *state = fsb_json_string(thread, "state");
		const char *body = fsb_json_string(thread, "body");
		int64		thread_id = 0;
		char	   *text;

		if (body == NULL)
			body = fsb_json_string(thread, "text");	/* spec envelope */
		if (type == NULL || body == NULL)
			continue;			/* lineitems have a null body */
		if (strcmp(type, "note") != 0 && strcmp(type, "customer") != 0 &&
			strcmp(type, "message") != 0)
			continue;
		if (state != NULL && strcmp(state, "published") != 0)
			continue;
		fsb_json_int64(thread, "id", &thread_id);
		if (thread_is_ours(body, thread_id))
			continue;
		text = render_html_to_text(body);
		if (text[0] == '\0')
			continue;
		added += insert_worklog(t, thread_id, type,
								person_name(cJSON_GetObjectItemCaseSensitive(thread, "createdBy")),
								text, fsb_json_string(thread, "createdAt"));
	}
	return added;
}

/* What one snapshot says, read before anything is changed. */
typedef struct ConversationState
{
	const cJSON *conversation;
	TicketRow	ticket;
	const char *status;
	TimestampTz updated_at;		/* NO_DATE when absent or not a date */
	bool		assignee_given; /* false: the payload is silent about it */
	int64		assignee_id;
	char	   *assignee_name;
	const cJSON *threads;
	WebhookResult *result;
} ConversationState;

static void
apply_snapshot(ConversationState *snap)
{
	TicketRow  *t = &snap->ticket;
	WebhookResult *result = snap->result;

	int64		last_thread_id = newest_thread_id(snap->threads);

	result->stale = is_stale(t, snap->updated_at, last_thread_id);
	if (!result->stale)
	{
		/*
		 * Only a change of the FreeScout status moves the SIEM status.  A
		 * status FreeScout merely still has says nothing new: the SIEM may
		 * have changed since, and that change is on its way out.
		 */
		result->status_changed = snap->status &&
			(t->status == NULL || strcmp(snap->status, t->status) != 0);
		if (result->status_changed)
			result->siem_rows_changed = apply_status(t, snap->status);
		result->assignee_changed = snap->assignee_given && snap->assignee_id != t->assignee_id;
		update_ticket(t, snap->status, snap->updated_at, last_thread_id,
					  snap->assignee_given, snap->assignee_id, snap->assignee_name);
	}
	if (cJSON_IsArray(snap->threads))
		result->notes_added += apply_threads(t, snap->threads);
}

/*
 * Runs the changes with freescout_applying_remote() true, so the SIEM's
 * triggers do not send them back to FreeScout.
 */
static void
apply_as_remote(ConversationState *snap)
{
	applying_remote = true;
	PG_TRY();
	{
		apply_snapshot(snap);
	}
	PG_FINALLY();
	{
		applying_remote = false;
	}
	PG_END_TRY();
}

static bool
load_ticket(int64 conversation_id, ConversationState *snap)
{
	snap->result->conversation_id = conversation_id;
	if (!find_ticket(conversation_id, &snap->ticket))
	{
		snap->result->ignored = "conversation is not linked to an alert or incident";
		return false;
	}
	snap->result->ticket_id = snap->ticket.ticket_id;
	return true;
}

/*
 * Applies one conversation snapshot (a webhook body, or a conversation the
 * reconciliation pulled).  The caller holds an SPI connection inside a
 * transaction.
 */
void
webhook_apply_conversation(const cJSON *conversation, WebhookResult *result)
{
	ConversationState	snap;
	int64		conversation_id;
	const cJSON *assignee;

	memset(&snap, 0, sizeof(snap));
	snap.result = result;
	schema_q = fsb_schema_quoted();
	if (!cJSON_IsObject(conversation) || !fsb_json_int64(conversation, "id", &conversation_id))
	{
		result->ignored = "payload has no conversation id";
		return;
	}
	if (!load_ticket(conversation_id, &snap))
		return;

	snap.status = conversation_status(conversation);
	if (!parse_iso_timestamp(fsb_json_string(conversation, "updatedAt"), &snap.updated_at))
		snap.updated_at = NO_DATE;
	assignee = cJSON_GetObjectItemCaseSensitive(conversation, "assignee");
	snap.assignee_given = assignee != NULL;
	if (cJSON_IsObject(assignee))
	{
		fsb_json_int64(assignee, "id", &snap.assignee_id);
		snap.assignee_name = person_name(assignee);
	}
	else if (!snap.assignee_given && fsb_json_int64(conversation, "assignee_id", &snap.assignee_id))
		snap.assignee_given = true; /* spec envelope */
	if (snap.assignee_id < 0 || snap.assignee_id > PG_INT32_MAX)
		snap.assignee_given = false;	/* not a FreeScout user id */
	snap.threads = cJSON_GetObjectItemCaseSensitive(
		cJSON_GetObjectItemCaseSensitive(conversation, "_embedded"), "threads");
	apply_as_remote(&snap);
}

/* The spec's conversation.note_added: {conversation_id, thread{...}}. */
static void
apply_spec_note(const cJSON *data, WebhookResult *result)
{
	ConversationState	snap;
	int64		conversation_id;
	cJSON	   *thread = cJSON_GetObjectItemCaseSensitive(data, "thread");
	cJSON	   *threads;

	memset(&snap, 0, sizeof(snap));
	snap.updated_at = NO_DATE;
	snap.result = result;
	schema_q = fsb_schema_quoted();
	if (!fsb_json_int64(data, "conversation_id", &conversation_id) || !cJSON_IsObject(thread))
	{
		result->ignored = "note event without conversation_id and thread";
		return;
	}
	if (!load_ticket(conversation_id, &snap))
		return;
	if (!cJSON_GetObjectItemCaseSensitive(thread, "type"))
		cJSON_AddStringToObject(thread, "type", "note");
	threads = cJSON_CreateArray();
	cJSON_AddItemReferenceToArray(threads, thread);
	snap.threads = threads;
	/* a note says nothing about status or assignee: only its thread applies */
	apply_as_remote(&snap);
}

/* ---------- the SQL function ---------- */

static void
reject(const char *event_type, int sqlstate, const char *message, const char *detail,
	   const char *hint)
{
	/* the attempt stays on record although this transaction rolls back */
	fsb_defer_log(event_type, message, detail);
	fsb_count(FSB_C_WEBHOOKS_REJECTED, 1);
	ereport(ERROR,
			(errcode(sqlstate),
			 errmsg("%s", message),
			 detail ? errdetail("%s", detail) : 0,
			 hint ? errhint("%s", hint) : 0));
}

static bool
event_is_conversation(const char *event)
{
	return strncmp(event, "convo.", 6) == 0 || strncmp(event, "conversation.", 13) == 0;
}

static void
log_applied(const char *event, const WebhookResult *r, const char *scheme)
{
	Oid			types[4] = {INT4OID, TEXTOID, TEXTOID, BOOLOID};
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	char	   *payload = psprintf("{\"conversation_id\":" INT64_FORMAT ",\"signature\":\"%s\","
								   "\"status_changed\":%s,\"assignee_changed\":%s,\"notes_added\":%d,"
								   "\"stale\":%s,\"ignored\":%s}",
								   r->conversation_id, scheme,
								   r->status_changed ? "true" : "false",
								   r->assignee_changed ? "true" : "false",
								   r->notes_added, r->stale ? "true" : "false",
								   r->ignored ? fsb_json_escape_for_log(r->ignored) : "null");

	values[0] = Int32GetDatum((int32) r->ticket_id);
	nulls[0] = r->ticket_id ? ' ' : 'n';
	/* event_type is varchar(50): an odd event name is clipped, not refused */
	values[1] = PointerGetDatum(cstring_to_text_with_len(event, pg_mbcliplen(event, strlen(event), 50)));
	values[2] = CStringGetTextDatum(payload);
	values[3] = BoolGetDatum(true);
	fsb_spi_run(psprintf("INSERT INTO %s.freescout_sync_log "
					 "(ticket_id, direction, event_type, payload, success) "
					 "VALUES ($1, 'from_freescout', $2, $3::jsonb, $4)", schema_q),
			4, types, values, nulls, SPI_OK_INSERT);
}

char *
webhook_result_json(const WebhookResult *r)
{
	if (r->ignored)
		return psprintf("{\"success\":true,\"ignored\":%s}", fsb_json_escape_for_log(r->ignored));
	return psprintf("{\"success\":true,\"conversation_id\":" INT64_FORMAT ",\"ticket_id\":" INT64_FORMAT
					",\"status_changed\":%s,\"assignee_changed\":%s,\"notes_added\":%d,\"stale\":%s}",
					r->conversation_id, r->ticket_id,
					r->status_changed ? "true" : "false",
					r->assignee_changed ? "true" : "false",
					r->notes_added, r->stale ? "true" : "false");
}

/*
 * Verifies and applies one webhook: the raw body, X-FreeScout-Signature and
 * X-FreeScout-Event.  `body_is_text` says the bytes already passed the
 * database's own encoding check (text input); raw bytes are checked here.
 */
static Datum
handle_webhook(const char *body, size_t body_len, bool body_is_text,
			   const char *signature, const char *header_event)
{
	const char *scheme;
	const char *event;
	cJSON	   *root;
	const cJSON *conversation;
	WebhookResult result;

	if (body_len > (size_t) fsb_webhook_max_bytes)
		reject("webhook_rejected", ERRCODE_PROGRAM_LIMIT_EXCEEDED, "webhook body is too large",
			   psprintf("The body has %zu bytes; freescout.webhook_max_bytes is %d.",
						body_len, fsb_webhook_max_bytes),
			   "Raise freescout.webhook_max_bytes if FreeScout really sends bodies this large.");
	if (fsb_webhook_secret == NULL || fsb_webhook_secret[0] == '\0')
		reject("webhook_rejected", ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
			   "webhook rejected: no webhook secret is configured",
			   NULL, "Set freescout.webhook_secret to FreeScout's webhook Secret Key and reload.");
	if (signature == NULL || signature[0] == '\0')
		reject("webhook_rejected", ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
			   "FreeScout webhook signature is missing", NULL,
			   "Pass the X-FreeScout-Signature header of the request.");
	if (!webhook_signature_valid(body, body_len, signature, fsb_webhook_secret, &scheme))
		reject("webhook_rejected", ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
			   "invalid FreeScout webhook signature",
			   strcmp(scheme, "none") == 0 ?
			   "The signature is neither base64 HMAC-SHA1 (28 characters) nor hex HMAC-SHA256 (64 digits)." :
			   psprintf("The %s signature does not match the body of %zu bytes.", scheme, body_len),
			   "Pass the X-FreeScout-Signature header and the raw, unmodified request body; "
			   "check that freescout.webhook_secret matches FreeScout's Secret Key.");

	/* JSON is UTF-8; text input was already checked against the database encoding */
	if ((!body_is_text || GetDatabaseEncoding() != PG_UTF8) &&
		(memchr(body, '\0', body_len) != NULL ||
		 !pg_verify_mbstr(PG_UTF8, body, (int) body_len, true)))
		reject("webhook_rejected", ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
			   "webhook body is not valid UTF-8", NULL,
			   "FreeScout sends UTF-8 JSON; check what sits between it and the database.");
	root = cJSON_ParseWithLength(body, body_len);
	if (root == NULL)
		reject("webhook_rejected", ERRCODE_INVALID_TEXT_REPRESENTATION,
			   "webhook body is not valid JSON",
			   psprintf("Parsing stopped near byte %ld.",
						(long) (cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() - body : 0)),
			   "The signature matched, so the body was cut or re-encoded on its way: pass the raw request body.");

	memset(&result, 0, sizeof(result));
	event = header_event;
	conversation = root;
	if (event == NULL || event[0] == '\0')
	{
		/* the spec's envelope */
		const cJSON *data = cJSON_GetObjectItemCaseSensitive(root, "data");

		event = fsb_json_string(root, "event");
		conversation = cJSON_GetObjectItemCaseSensitive(data, "conversation");
		if (event && strcmp(event, "conversation.note_added") == 0 && conversation == NULL)
			conversation = data;
	}

	SPI_connect();
	schema_q = fsb_schema_quoted();
	if (event == NULL)
		result.ignored = "no event in the header or the body";
	else if (!event_is_conversation(event))
		result.ignored = "event is not about a conversation";
	else if (strcmp(event, "conversation.note_added") == 0 &&
			 cJSON_GetObjectItemCaseSensitive(conversation, "thread") != NULL)
		apply_spec_note(conversation, &result);
	else if (strcmp(event, "convo.deleted_forever") == 0)
		result.ignored = "deleted conversations are kept linked";
	else
		webhook_apply_conversation(conversation, &result);

	log_applied(event ? event : "unknown", &result, scheme);
	SPI_finish();

	fsb_count(result.ignored ? FSB_C_WEBHOOKS_IGNORED : FSB_C_WEBHOOKS_APPLIED, 1);
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(webhook_result_json(&result)));
}

static char *
optional_text_arg(FunctionCallInfo fcinfo, int n)
{
	return PG_ARGISNULL(n) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(n));
}

/*
 * The SQL entry points: the body as text, or as the raw bytes received (for
 * callers that do not decode it first; the HMAC covers exactly these bytes).
 */
static Datum
webhook_entry(FunctionCallInfo fcinfo, bool body_is_text)
{
	struct varlena *body;

	if (PG_ARGISNULL(0))
		reject("webhook_rejected", ERRCODE_NULL_VALUE_NOT_ALLOWED, "webhook body is missing",
			   NULL, "Pass the raw request body.");
	body = PG_GETARG_VARLENA_PP(0);
	PG_RETURN_DATUM(handle_webhook(VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body), body_is_text,
								   optional_text_arg(fcinfo, 1), optional_text_arg(fcinfo, 2)));
}

/* freescout_webhook(body text, signature text, event text) */
Datum
freescout_webhook(PG_FUNCTION_ARGS)
{
	return webhook_entry(fcinfo, true);
}

/* freescout_webhook(body bytea, signature text, event text) */
Datum
freescout_webhook_bytes(PG_FUNCTION_ARGS)
{
	return webhook_entry(fcinfo, false);
}
