/*
 * json_util.c
 *		cJSON wired to palloc, and the few accessors everyone needs.
 *
 * Routing cJSON's allocations through palloc puts every parse tree in the
 * current memory context, so an ereport() thrown while a tree is live leaks
 * nothing: the context reset that follows the error frees it.  cJSON_Delete()
 * still works (it pfrees), and is used where a tree is dropped early.
 */
#include "freescout_bridge.h"

#include <cjson/cJSON.h>

#include "lib/stringinfo.h"

static void *
json_palloc(size_t size)
{
	return palloc(size);
}

static void
json_pfree(void *pointer)
{
	if (pointer != NULL)
		pfree(pointer);
}

void
fsb_json_init(void)
{
	cJSON_Hooks hooks = {json_palloc, json_pfree};

	cJSON_InitHooks(&hooks);
}

/* The string member `key`, or NULL when absent or not a string. */
const char *
fsb_json_string(const cJSON *obj, const char *key)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);

	return cJSON_IsString(item) ? item->valuestring : NULL;
}

/*
 * The integer member `key`.  FreeScout sends ids as numbers, but a string of
 * digits is accepted too; anything fractional or out of range is refused.
 */
bool
fsb_json_int64(const cJSON *obj, const char *key, int64 *out)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);

	if (cJSON_IsNumber(item))
	{
		double		v = item->valuedouble;

		if (v != (double) (int64) v || v < -9.0e15 || v > 9.0e15)
			return false;
		*out = (int64) v;
		return true;
	}
	if (cJSON_IsString(item) && item->valuestring[0] != '\0')
	{
		char	   *end;
		long long	v = strtoll(item->valuestring, &end, 10);

		if (*end != '\0')
			return false;
		*out = (int64) v;
		return true;
	}
	return false;
}

/* Compact text of a tree, in the current memory context. */
char *
fsb_json_print(const cJSON *item)
{
	char	   *text = cJSON_PrintUnformatted(item);

	if (text == NULL)
		elog(ERROR, "could not serialise JSON");
	return text;
}

/*
 * A JSON string literal (with quotes) for arbitrary text, so log payloads
 * built with appendStringInfo stay valid JSON whatever the text holds.
 */
char *
fsb_json_escape_for_log(const char *s)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoCharMacro(&buf, '"');
	for (const unsigned char *p = (const unsigned char *) s; *p; p++)
	{
		switch (*p)
		{
			case '"':
				appendStringInfoString(&buf, "\\\"");
				break;
			case '\\':
				appendStringInfoString(&buf, "\\\\");
				break;
			default:
				if (*p < 0x20)
					appendStringInfo(&buf, "\\u%04x", *p);
				else
					appendStringInfoCharMacro(&buf, (char) *p);
		}
	}
	appendStringInfoCharMacro(&buf, '"');
	return buf.data;
}
