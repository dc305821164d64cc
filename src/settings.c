/*
 * settings.c
 *		Module entry point: the freescout.* settings, shared memory hooks and
 *		registration of the background worker.
 *
 * The settings mirror the .env of the integration spec (FREESCOUT_URL ->
 * freescout.url, ...).  Everything the worker reads is PGC_SIGHUP so a reload
 * applies it, except the database the worker connects to.  Secrets are
 * GUC_SUPERUSER_ONLY and never echoed back by our own code.
 */
#include "freescout_bridge.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

bool		fsb_enabled = true;
char	   *fsb_url = NULL;
char	   *fsb_api_key = NULL;
int			fsb_mailbox_id = 1;
bool		fsb_auto_create_on_alert = true;
int			fsb_auto_create_severity_min = 3;
bool		fsb_auto_create_on_incident = true;
int			fsb_sync_interval = 60;
char	   *fsb_webhook_secret = NULL;
char	   *fsb_database = NULL;
int			fsb_bot_user_id = 1;
char	   *fsb_customer_email = NULL;
char	   *fsb_siem_url = NULL;
int			fsb_max_concurrency = 32;
int			fsb_request_timeout_ms = 10000;
int			fsb_max_attempts = 10;
bool		fsb_allow_http = false;
char	   *fsb_custom_fields = NULL;
int			fsb_webhook_max_bytes = 1024 * 1024;

void		_PG_init(void);

/*
 * The URL rules live here, not in the worker, so that a bad value is refused
 * when it is set rather than discovered at the first request.
 */
const char *
fsb_url_problem(const char *url)
{
	if (url == NULL || url[0] == '\0')
		return "freescout.url is not set";
	if (pg_strncasecmp(url, "https://", 8) == 0)
		return NULL;
	if (pg_strncasecmp(url, "http://", 7) == 0)
		return fsb_allow_http ? NULL :
			"plain http is refused unless freescout.allow_http is on";
	return "freescout.url must start with https://";
}

static bool
check_url(char **newval, void **extra, GucSource source)
{
	const char *url = *newval;

	if (url == NULL || url[0] == '\0')
		return true;			/* unset: the worker idles */
	if (pg_strncasecmp(url, "https://", 8) != 0 &&
		pg_strncasecmp(url, "http://", 7) != 0)
	{
		GUC_check_errdetail("The FreeScout URL must start with https:// (or http:// together with freescout.allow_http).");
		return false;
	}
	if (strchr(url, '?') != NULL || strchr(url, '#') != NULL)
	{
		GUC_check_errdetail("Give the base URL of FreeScout, without a query or fragment.");
		return false;
	}
	return true;
}

static bool
check_custom_fields(char **newval, void **extra, GucSource source)
{
	const char *p = *newval;

	/* "name:id,name:id" where name is one of the fields we know how to fill */
	while (p && *p)
	{
		const char *colon = strchr(p, ':');
		const char *comma;
		char	   *end;
		long		id;

		while (*p == ' ')
			p++;
		if (colon == NULL)
		{
			GUC_check_errdetail("Expected a list of name:field_id pairs, such as \"alert_id:3,severity:4\".");
			return false;
		}
		if (!((colon - p == 8 && strncmp(p, "alert_id", 8) == 0) ||
			  (colon - p == 8 && strncmp(p, "severity", 8) == 0) ||
			  (colon - p == 8 && strncmp(p, "computer", 8) == 0) ||
			  (colon - p == 12 && strncmp(p, "mitre_tactic", 12) == 0) ||
			  (colon - p == 11 && strncmp(p, "incident_id", 11) == 0)))
		{
			GUC_check_errdetail("Unknown field \"%.*s\"; known fields are alert_id, incident_id, severity, computer and mitre_tactic.",
								(int) (colon - p), p);
			return false;
		}
		id = strtol(colon + 1, &end, 10);
		if (end == colon + 1 || id <= 0 || id > PG_INT32_MAX)
		{
			GUC_check_errdetail("The FreeScout custom field id after \"%.*s:\" must be a positive integer.",
								(int) (colon - p), p);
			return false;
		}
		while (*end == ' ')
			end++;
		comma = end;
		if (*comma != '\0' && *comma != ',')
		{
			GUC_check_errdetail("Separate name:field_id pairs with commas.");
			return false;
		}
		p = (*comma == ',') ? comma + 1 : comma;
	}
	return true;
}

static void
define_settings(void)
{
	DefineCustomBoolVariable("freescout.enabled",
							 "Turns the FreeScout integration on or off.",
							 "When off, no new work is queued and the worker sends nothing.",
							 &fsb_enabled, true, PGC_SIGHUP, 0,
							 NULL, NULL, NULL);
	DefineCustomStringVariable("freescout.url",
							   "Base URL of the FreeScout installation.",
							   "Must be https:// unless freescout.allow_http is on.",
							   &fsb_url, "", PGC_SIGHUP, 0,
							   check_url, NULL, NULL);
	DefineCustomStringVariable("freescout.api_key",
							   "FreeScout API key (API & Webhooks module).",
							   NULL,
							   &fsb_api_key, "", PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("freescout.mailbox_id",
							"FreeScout mailbox that receives the conversations.",
							NULL,
							&fsb_mailbox_id, 1, 1, INT_MAX, PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomBoolVariable("freescout.auto_create_on_alert",
							 "Creates a conversation for each alert at or above the severity threshold.",
							 NULL,
							 &fsb_auto_create_on_alert, true, PGC_SIGHUP, 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("freescout.auto_create_severity_min",
							"Lowest alert severity that creates a conversation (3 = high, 4 = critical).",
							NULL,
							&fsb_auto_create_severity_min, 3, 1, 4, PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomBoolVariable("freescout.auto_create_on_incident",
							 "Creates a conversation for each new incident.",
							 NULL,
							 &fsb_auto_create_on_incident, true, PGC_SIGHUP, 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("freescout.sync_interval",
							"Seconds between reconciliations with FreeScout; 0 turns them off.",
							NULL,
							&fsb_sync_interval, 60, 0, 86400, PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomStringVariable("freescout.webhook_secret",
							   "Secret key that signs FreeScout webhooks.",
							   NULL,
							   &fsb_webhook_secret, "", PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("freescout.database",
							   "Database the worker connects to (the SIEM database).",
							   NULL,
							   &fsb_database, "postgres", PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("freescout.bot_user_id",
							"FreeScout user id the bridge acts as (byUser, note author).",
							NULL,
							&fsb_bot_user_id, 1, 1, INT_MAX, PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomStringVariable("freescout.customer_email",
							   "Customer e-mail of the conversations the bridge creates.",
							   NULL,
							   &fsb_customer_email, "siem@example.com", PGC_SIGHUP, 0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("freescout.siem_url",
							   "Base URL of the SIEM UI, for the \"View in SIEM\" link.",
							   NULL,
							   &fsb_siem_url, "https://siem.example.com", PGC_SIGHUP, 0,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("freescout.max_concurrency",
							"Most requests in flight to FreeScout at once.",
							NULL,
							&fsb_max_concurrency, 32, 1, 256, PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("freescout.request_timeout",
							"Timeout of one request to FreeScout.",
							NULL,
							&fsb_request_timeout_ms, 10000, 100, 600000, PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("freescout.max_attempts",
							"Attempts before a request is dead-lettered.",
							NULL,
							&fsb_max_attempts, 10, 1, 1000, PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomBoolVariable("freescout.allow_http",
							 "Allows a plain http:// FreeScout URL (tests only).",
							 NULL,
							 &fsb_allow_http, false, PGC_SIGHUP, 0,
							 NULL, NULL, NULL);
	DefineCustomStringVariable("freescout.custom_fields",
							   "Maps alert fields to FreeScout custom field ids, as name:id pairs.",
							   "Known names: alert_id, incident_id, severity, computer, mitre_tactic.  Empty: no custom fields are set.",
							   &fsb_custom_fields, "", PGC_SIGHUP, 0,
							   check_custom_fields, NULL, NULL);
	DefineCustomIntVariable("freescout.webhook_max_bytes",
							"Largest webhook body freescout_webhook() accepts.",
							NULL,
							&fsb_webhook_max_bytes, 1024 * 1024, 1024, 64 * 1024 * 1024,
							PGC_SUSET, GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("freescout");
}

void
_PG_init(void)
{
	define_settings();
	fsb_json_init();

	/*
	 * Shared memory and the worker need the library loaded at postmaster
	 * start.  Loaded later (a plain LOAD), the SQL functions still work; they
	 * just cannot reach a worker.
	 */
	if (!process_shared_preload_libraries_in_progress)
		return;

	fsb_shared_state_request();
	fsb_register_worker();
}
