/*
 * freescout_api.c
 *		The FreeScout API as the real "API & Webhooks" module speaks it:
 *		request bodies and URLs going out, responses coming back.
 *
 * Where the integration spec and the real module disagree we send what the
 * module accepts: string statuses (an integer silently becomes "active"),
 * PUT with byUser instead of PATCH, tags in a separate PUT after the create,
 * and custom fields as [{id, value}].  Nothing here touches SQL or sockets.
 */
#include "freescout_bridge.h"
#include "freescout_api.h"

#include <cjson/cJSON.h>

#include "lib/stringinfo.h"
#include "utils/timestamp.h"

static const char *
base_url(size_t *len)
{
	const char *base = fsb_url ? fsb_url : "";

	*len = strlen(base);
	while (*len > 0 && base[*len - 1] == '/')
		(*len)--;
	return base;
}

char *
fsapi_url(const char *path_format,...)
{
	StringInfoData buf;
	size_t		len;
	const char *base = base_url(&len);

	initStringInfo(&buf);
	appendBinaryStringInfo(&buf, base, len);
	for (;;)
	{
		va_list		args;
		int			needed;

		va_start(args, path_format);
		needed = appendStringInfoVA(&buf, path_format, args);
		va_end(args);
		if (needed == 0)
			break;
		enlargeStringInfo(&buf, needed);
	}
	return buf.data;
}

/* The web page of a conversation, which analysts open from the SIEM. */
char *
fsapi_ticket_url(int64 conversation_id)
{
	return fsapi_url("/conversation/" INT64_FORMAT, conversation_id);
}

static void
append_query_value(StringInfo buf, const char *value)
{
	for (const unsigned char *p = (const unsigned char *) value; *p; p++)
	{
		if (isalnum(*p) || *p == '-' || *p == '_' || *p == '.' || *p == '~')
			appendStringInfoChar(buf, (char) *p);
		else
			appendStringInfo(buf, "%%%02X", *p);
	}
}

char *
fsapi_create_body(const TicketContent *content)
{
	cJSON	   *root = cJSON_CreateObject();
	cJSON	   *customer = cJSON_AddObjectToObject(root, "customer");
	cJSON	   *threads = cJSON_AddArrayToObject(root, "threads");
	cJSON	   *thread = cJSON_CreateObject();

	cJSON_AddStringToObject(root, "type", "email");
	cJSON_AddNumberToObject(root, "mailboxId", fsb_mailbox_id);
	cJSON_AddStringToObject(root, "subject", content->subject);
	cJSON_AddStringToObject(customer, "email", fsb_customer_email);
	cJSON_AddStringToObject(customer, "firstName", "SIEM");
	cJSON_AddStringToObject(customer, "lastName", "System");
	cJSON_AddStringToObject(thread, "type", "customer");
	cJSON_AddStringToObject(thread, "text", content->html);
	cJSON_AddItemToObject(thread, "customer", cJSON_CreateObject());
	cJSON_AddStringToObject(cJSON_GetObjectItem(thread, "customer"), "email",
							fsb_customer_email);
	cJSON_AddItemToArray(threads, thread);
	cJSON_AddStringToObject(root, "status", "active");
	return fsb_json_print(root);
}

char *
fsapi_tags_body(const List *tags)
{
	cJSON	   *root = cJSON_CreateObject();
	cJSON	   *array = cJSON_AddArrayToObject(root, "tags");
	ListCell   *lc;

	foreach(lc, tags)
		cJSON_AddItemToArray(array, cJSON_CreateString((const char *) lfirst(lc)));
	return fsb_json_print(root);
}

static const char *
custom_field_value(const TicketContent *content, const char *name, size_t name_len,
				   char *scratch, size_t scratch_len)
{
#define NAME_IS(s) (name_len == strlen(s) && strncmp(name, s, name_len) == 0)
	if (NAME_IS("alert_id"))
		return content->target_kind == 'a' ?
			(snprintf(scratch, scratch_len, INT64_FORMAT, content->target_id), scratch) : NULL;
	if (NAME_IS("incident_id"))
		return content->target_kind == 'i' ?
			(snprintf(scratch, scratch_len, INT64_FORMAT, content->target_id), scratch) : NULL;
	if (NAME_IS("severity"))
		return content->severity > 0 ? render_severity_name(content->severity) : NULL;
	if (NAME_IS("computer"))
		return content->computer;
	if (NAME_IS("mitre_tactic"))
		return content->mitre_tactic;
#undef NAME_IS
	return NULL;
}

/*
 * {"customFields":[{"id":3,"value":"12"},...]} for the fields named in
 * freescout.custom_fields, or NULL when there is nothing to set.
 */
char *
fsapi_custom_fields_body(const TicketContent *content, const char *mapping)
{
	cJSON	   *root;
	cJSON	   *array;
	const char *p = mapping;
	int			n = 0;

	if (mapping == NULL || mapping[0] == '\0')
		return NULL;
	root = cJSON_CreateObject();
	array = cJSON_AddArrayToObject(root, "customFields");
	while (*p)
	{
		const char *colon;
		char	   *end;
		long		id;
		char		scratch[32];
		const char *value;
		cJSON	   *field;

		while (*p == ' ')
			p++;
		colon = strchr(p, ':');
		if (colon == NULL)
			break;
		id = strtol(colon + 1, &end, 10);
		value = custom_field_value(content, p, colon - p, scratch, sizeof(scratch));
		if (value != NULL)
		{
			field = cJSON_CreateObject();
			cJSON_AddNumberToObject(field, "id", id);
			cJSON_AddStringToObject(field, "value", value);
			cJSON_AddItemToArray(array, field);
			n++;
		}
		p = strchr(end, ',');
		if (p == NULL)
			break;
		p++;
	}
	if (n == 0)
		return NULL;
	return fsb_json_print(root);
}

bool
fsapi_valid_status(const char *status)
{
	return status != NULL &&
		(strcmp(status, "active") == 0 || strcmp(status, "pending") == 0 ||
		 strcmp(status, "closed") == 0 || strcmp(status, "spam") == 0);
}

/* byUser first: the module applies keys in order and needs it for status. */
char *
fsapi_status_body(const char *status)
{
	cJSON	   *root = cJSON_CreateObject();

	Assert(fsapi_valid_status(status));
	cJSON_AddNumberToObject(root, "byUser", fsb_bot_user_id);
	cJSON_AddStringToObject(root, "status", status);
	return fsb_json_print(root);
}

char *
fsapi_note_body(const char *html)
{
	cJSON	   *root = cJSON_CreateObject();

	cJSON_AddStringToObject(root, "type", "note");
	cJSON_AddStringToObject(root, "text", html);
	cJSON_AddNumberToObject(root, "user", fsb_bot_user_id);
	return fsb_json_print(root);
}

/*
 * The list query that finds a conversation we may already have created:
 * our mailbox and customer, created since shortly before our first attempt,
 * oldest first so that paging is stable while new ones are being added.
 */
char *
fsapi_lookup_url(TimestampTz created_since, const char *marker, int page)
{
	StringInfoData buf;
	struct pg_tm tm;
	fsec_t		fsec;
	char		since[32];
	size_t		len;
	const char *base = base_url(&len);

	if (timestamp2tm(created_since, NULL, &tm, &fsec, NULL, NULL) != 0)
		elog(ERROR, "timestamp out of range");
	snprintf(since, sizeof(since), "%04d-%02d-%02dT%02d:%02d:%02dZ",
			 tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);

	initStringInfo(&buf);
	appendBinaryStringInfo(&buf, base, len);
	appendStringInfo(&buf, "/api/conversations?mailboxId=%d&customerEmail=", fsb_mailbox_id);
	append_query_value(&buf, fsb_customer_email);
	appendStringInfoString(&buf, "&createdSince=");
	append_query_value(&buf, since);
	appendStringInfo(&buf, "&sortField=createdAt&sortOrder=asc&pageSize=100&page=%d", page);
	/* module v1.0.87 filters by subject substring; older ones ignore it and we match ourselves */
	appendStringInfoString(&buf, "&subject=");
	append_query_value(&buf, marker);
	return buf.data;
}

static void
copy_status(const cJSON *conversation, FsConversationRef *out)
{
	const char *status = fsb_json_string(conversation, "status");

	strlcpy(out->status, fsapi_valid_status(status) ? status : "active", sizeof(out->status));
}

/*
 * The conversation a 201 answered with.  The body carries the full object;
 * Resource-ID is the fallback when a proxy strips the body.
 */
bool
fsapi_parse_created(const char *body, int64 resource_id, FsConversationRef *out)
{
	cJSON	   *root = cJSON_Parse(body);
	bool		ok = false;

	memset(out, 0, sizeof(*out));
	strlcpy(out->status, "active", sizeof(out->status));
	if (root && fsb_json_int64(root, "id", &out->id) && out->id > 0)
	{
		if (!fsb_json_int64(root, "number", &out->number))
			out->number = out->id;
		copy_status(root, out);
		ok = true;
	}
	else if (resource_id > 0)
	{
		out->id = out->number = resource_id;
		ok = true;
	}
	if (root)
		cJSON_Delete(root);
	return ok;
}

static bool
subject_has_marker(const char *subject, const char *marker)
{
	size_t		len = strlen(marker);

	/* "SIEM Alert #12:" must not match "SIEM Alert #123: ..." */
	return subject != NULL && strncmp(subject, marker, len) == 0;
}

FsLookupResult
fsapi_find_marker(const char *body, const char *marker, int page,
				  FsConversationRef *out)
{
	cJSON	   *root = cJSON_Parse(body);
	const cJSON *list;
	const cJSON *conversation;
	const cJSON *paging;
	int64		total_pages = 1;
	FsLookupResult result = FS_LOOKUP_UNPARSABLE;

	memset(out, 0, sizeof(*out));
	if (root == NULL)
		return FS_LOOKUP_UNPARSABLE;
	list = cJSON_GetObjectItemCaseSensitive(
		cJSON_GetObjectItemCaseSensitive(root, "_embedded"), "conversations");
	paging = cJSON_GetObjectItemCaseSensitive(root, "page");
	if (cJSON_IsArray(list))
	{
		result = FS_LOOKUP_ABSENT;
		cJSON_ArrayForEach(conversation, list)
		{
			if (subject_has_marker(fsb_json_string(conversation, "subject"), marker) &&
				fsb_json_int64(conversation, "id", &out->id))
			{
				if (!fsb_json_int64(conversation, "number", &out->number))
					out->number = out->id;
				copy_status(conversation, out);
				result = FS_LOOKUP_FOUND;
				break;
			}
		}
		if (result == FS_LOOKUP_ABSENT && paging &&
			fsb_json_int64(paging, "totalPages", &total_pages) && page < total_pages)
			result = FS_LOOKUP_NOT_ON_PAGE;
	}
	cJSON_Delete(root);
	return result;
}

/*
 * A one-line account of a failed response: the module's message and the
 * first validation error, e.g. "HTTP 400: Error occurred (mailboxId: Mailbox
 * not found)".  Never includes request headers, so never the API key.
 */
char *
fsapi_describe_error(long http_status, const char *body)
{
	cJSON	   *root = body ? cJSON_Parse(body) : NULL;
	const char *message = NULL;
	const cJSON *errors;
	const cJSON *first = NULL;
	char	   *text;

	if (root && cJSON_IsObject(root))
	{
		message = fsb_json_string(root, "message");
		errors = cJSON_GetObjectItemCaseSensitive(
			cJSON_GetObjectItemCaseSensitive(root, "_embedded"), "errors");
		if (cJSON_IsArray(errors))
			first = cJSON_GetArrayItem(errors, 0);
	}
	else if (root && cJSON_IsString(root))
		message = root->valuestring;

	if (first && fsb_json_string(first, "message"))
		text = psprintf("HTTP %ld: %.200s (%.60s: %.200s)", http_status,
						message ? message : "error",
						fsb_json_string(first, "path") ? fsb_json_string(first, "path") : "?",
						fsb_json_string(first, "message"));
	else if (message)
		text = psprintf("HTTP %ld: %.200s", http_status, message);
	else
		text = psprintf("HTTP %ld", http_status);
	if (root)
		cJSON_Delete(root);
	return text;
}
