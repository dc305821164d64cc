/*
 * delivery.c
 *		What one outbox job means in FreeScout requests, step by step, and
 *		how each failure is classified: retry, wait for the host, or give up.
 *
 * A job runs as a short chain of requests without touching the database:
 * a create whose earlier attempt may have reached FreeScout first pages
 * through the list API looking for its marker, and adopts what it finds
 * instead of creating a second conversation.  The chain ends in an outcome
 * that outbox.c records in one transaction.
 */
#include "freescout_bridge.h"
#include "outbox.h"

#include "common/pg_prng.h"
#include "utils/elog.h"

#define BACKOFF_BASE_MS		1000L
#define BACKOFF_CAP_MS		300000L

/* Marker carried by a note we post, so a retry can see it already landed. */
static char *
note_marker(const OutboxJob *job)
{
	if (job->kind == JOB_LINK)
		return psprintf("freescout_bridge link:alert:" INT64_FORMAT, job->target_id);
	return psprintf("freescout_bridge note:" INT64_FORMAT, job->worklog_id);
}

static HttpRequest *
new_request(OutboxJob *job, const char *method, char *url, char *body)
{
	HttpRequest *req = palloc0(sizeof(HttpRequest));

	req->method = method;
	req->url = url;
	req->body = body;
	req->owner = job;
	job->request = req;
	return req;
}

static const char *
event_type_of(const OutboxJob *job)
{
	if (job->lookup_page > 0)
		return "lookup";
	switch (job->kind)
	{
		case JOB_CREATE:
			return "create";
		case JOB_TAGS:
			return "tags";
		case JOB_FIELDS:
			return "custom_fields";
		case JOB_STATUS:
			return "status_change";
		case JOB_NOTE:
			return "note_added";
		case JOB_LINK:
			return "alert_linked";
	}
	return "unknown";
}

static HttpRequest *
finish(OutboxJob *job, JobOutcome outcome, const char *why)
{
	job->outcome = outcome;
	if (why)
		job->error = pstrdup(why);
	job->request = NULL;
	return NULL;
}

static HttpRequest *
create_request(OutboxJob *job)
{
	job->lookup_page = 0;
	return new_request(job, "POST", fsapi_url("/api/conversations"),
					   fsapi_create_body(job->content));
}

static HttpRequest *
lookup_request(OutboxJob *job, int page)
{
	/* a minute of slack for clock skew between us and FreeScout */
	TimestampTz since = job->first_claimed_at - 60 * USECS_PER_SEC;

	job->lookup_page = page;
	return new_request(job, "GET", fsapi_lookup_url(since, job->content->marker, page), NULL);
}

static HttpRequest *
note_request(OutboxJob *job)
{
	StringInfoData html;

	initStringInfo(&html);
	if (job->kind == JOB_LINK)
		appendStringInfoString(&html, render_alert_joined_note(job->row_json, job->target_id));
	else
		appendStringInfoString(&html, job->note_html);
	appendStringInfo(&html, "<p><small>%s</small></p>", note_marker(job));
	job->lookup_page = 0;
	return new_request(job, "POST",
					   fsapi_url("/api/conversations/" INT64_FORMAT "/threads",
								 job->conversation_id),
					   fsapi_note_body(html.data));
}

/* The first request of a freshly claimed job, or NULL when it ends at once. */
HttpRequest *
delivery_start(OutboxJob *job)
{
	char	   *body;

	job->retry_after_s = -1;
	if (job->kind != JOB_CREATE && job->conversation_id == 0)
		return finish(job, OUTCOME_POSTPONE, "waiting for the ticket to be created");
	if (job->row_json == NULL && job->kind != JOB_NOTE)
		return finish(job, OUTCOME_SKIPPED,
					  job->target_kind == 'i' ? "incident no longer exists" :
					  "alert no longer exists");

	switch (job->kind)
	{
		case JOB_CREATE:
			if (job->ticket_id != 0)
				return finish(job, OUTCOME_SKIPPED, NULL);
			job->content = render_ticket(job->target_kind, job->target_id, job->row_json);
			return job->needs_lookup ? lookup_request(job, 1) : create_request(job);

		case JOB_TAGS:
			job->content = render_ticket(job->target_kind, job->target_id, job->row_json);
			return new_request(job, "PUT",
							   fsapi_url("/api/conversations/" INT64_FORMAT "/tags",
										 job->conversation_id),
							   fsapi_tags_body(job->content->tags));

		case JOB_FIELDS:
			job->content = render_ticket(job->target_kind, job->target_id, job->row_json);
			body = fsapi_custom_fields_body(job->content, fsb_custom_fields);
			if (body == NULL)
				return finish(job, OUTCOME_SKIPPED, NULL);
			return new_request(job, "PUT",
							   fsapi_url("/api/conversations/" INT64_FORMAT "/custom_fields",
										 job->conversation_id),
							   body);

		case JOB_STATUS:
			if (job->freescout_status == NULL)
			{
				/* logged, not silently dropped: freescout_status_map needs a row */
				CallRecord *call = palloc0(sizeof(CallRecord));

				call->event_type = "status_change";
				call->error = psprintf("SIEM status \"%s\" has no FreeScout mapping in freescout_status_map",
									   job->siem_status ? job->siem_status : "");
				job->calls = lappend(job->calls, call);
				return finish(job, OUTCOME_SKIPPED, call->error);
			}
			return new_request(job, "PUT",
							   fsapi_url("/api/conversations/" INT64_FORMAT,
										 job->conversation_id),
							   fsapi_status_body(job->freescout_status));

		case JOB_NOTE:
		case JOB_LINK:
			if (job->kind == JOB_LINK && job->already_linked)
				return finish(job, OUTCOME_SKIPPED, NULL);
			if (job->needs_lookup)
			{
				job->lookup_page = 1;
				return new_request(job, "GET",
								   fsapi_url("/api/conversations/" INT64_FORMAT "?embed=threads",
											 job->conversation_id),
								   NULL);
			}
			return note_request(job);
	}
	elog(ERROR, "unknown outbox job kind %d", (int) job->kind);
	return NULL;
}

/*
 * Failure classes.  "Host unavailable" failures pause all sending (the
 * worker probes with one request at a time until FreeScout answers), so an
 * outage costs a handful of requests rather than one per queued job.
 * "Uncertain" means the request may have taken effect, so the retry looks
 * before it creates.
 */
static HttpRequest *
classify_failure(OutboxJob *job, HttpRequest *req)
{
	job->http_status = req->http_status;
	job->retry_after_s = req->retry_after_s;

	if (req->curl_code != 0)
	{
		job->error = psprintf("FreeScout unreachable: %s", req->error ? req->error : "transport error");
		job->uncertain = req->maybe_delivered;
		job->host_unavailable = true;
		job->error_sqlstate = ERRCODE_CONNECTION_FAILURE;
		return finish(job, OUTCOME_RETRY, NULL);
	}

	job->error = fsapi_describe_error(req->http_status, req->response);
	switch (req->http_status)
	{
		case 429:
		case 503:
			job->host_unavailable = true;
			job->error_sqlstate = ERRCODE_CONNECTION_FAILURE;
			return finish(job, OUTCOME_RETRY, NULL);
		case 401:
		case 403:
			/* a wrong key: hammering will not fix it, a reload will */
			job->host_unavailable = true;
			job->error_sqlstate = ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION;
			return finish(job, OUTCOME_RETRY, NULL);
		case 408:
			job->uncertain = true;
			job->error_sqlstate = ERRCODE_CONNECTION_FAILURE;
			return finish(job, OUTCOME_RETRY, NULL);
		default:
			break;
	}
	if (req->http_status >= 500)
	{
		job->uncertain = true;
		job->error_sqlstate = ERRCODE_CONNECTION_FAILURE;
		return finish(job, OUTCOME_RETRY, NULL);
	}
	/* 400, 404, 405, 422 ...: the same request will fail the same way */
	job->error_sqlstate = req->http_status == 404 ?
		ERRCODE_UNDEFINED_OBJECT : ERRCODE_INVALID_PARAMETER_VALUE;
	return finish(job, OUTCOME_DEAD, NULL);
}

static void
record_call(OutboxJob *job, HttpRequest *req)
{
	CallRecord *call = palloc0(sizeof(CallRecord));
	const char *path = req->url;
	size_t		base_len = fsb_url ? strlen(fsb_url) : 0;

	/* log the path only: the base URL is configuration, not news */
	if (base_len > 0 && strncmp(path, fsb_url, base_len) == 0)
		path += base_len;
	call->event_type = event_type_of(job);
	call->method = req->method;
	call->path = pstrdup(path);
	call->http_status = req->http_status;
	call->latency_ms = req->elapsed_ms;
	call->success = req->curl_code == 0 && req->http_status >= 200 && req->http_status < 300;
	if (!call->success)
		call->error = req->curl_code != 0 ?
			psprintf("%s", req->error ? req->error : "transport error") :
			fsapi_describe_error(req->http_status, req->response);
	job->calls = lappend(job->calls, call);
	fsb_count(FSB_C_REQUESTS, 1);
	fsb_count(call->success ? FSB_C_REQUEST_OK : FSB_C_REQUEST_FAILED, 1);
	fsb_count(FSB_C_LATENCY_SUM_US, (uint64) (req->elapsed_ms * 1000.0));
}

static int64
created_thread_id(HttpRequest *req)
{
	FsConversationRef ref;

	/* a thread object has an id just like a conversation */
	if (fsapi_parse_created(req->response, req->resource_id, &ref))
		return ref.id;
	return 0;
}

/*
 * Consumes a finished request.  Returns the job's next request, or NULL
 * when the job has reached its outcome.
 */
HttpRequest *
delivery_continue(OutboxJob *job, HttpRequest *req)
{
	bool		ok;

	record_call(job, req);
	job->request = NULL;
	ok = req->curl_code == 0 && req->http_status >= 200 && req->http_status < 300;
	if (!ok)
		return classify_failure(job, req);
	job->http_status = req->http_status;

	if (job->kind == JOB_CREATE)
	{
		if (job->lookup_page > 0)
		{
			switch (fsapi_find_marker(req->response, job->content->marker,
									  job->lookup_page, &job->conversation))
			{
				case FS_LOOKUP_FOUND:
					job->adopted = true;
					return finish(job, OUTCOME_DONE, NULL);
				case FS_LOOKUP_NOT_ON_PAGE:
					return lookup_request(job, job->lookup_page + 1);
				case FS_LOOKUP_ABSENT:
					job->needs_lookup = false;
					return create_request(job);
				case FS_LOOKUP_UNPARSABLE:
					job->error_sqlstate = ERRCODE_CONNECTION_FAILURE;
					return finish(job, OUTCOME_RETRY,
								  "FreeScout answered the conversation list with something that is not a list");
			}
		}
		if (!fsapi_parse_created(req->response, req->resource_id, &job->conversation))
		{
			/* it exists but we cannot tell its id: the retry looks it up */
			job->uncertain = true;
			job->error_sqlstate = ERRCODE_CONNECTION_FAILURE;
			return finish(job, OUTCOME_RETRY,
						  "FreeScout accepted the conversation but its answer had no id");
		}
		return finish(job, OUTCOME_DONE, NULL);
	}

	if (job->kind == JOB_NOTE || job->kind == JOB_LINK)
	{
		if (job->lookup_page > 0)
		{
			if (strstr(req->response, note_marker(job)) != NULL)
				return finish(job, OUTCOME_DONE, NULL);
			job->needs_lookup = false;
			return note_request(job);
		}
		job->thread_id = created_thread_id(req);
	}
	return finish(job, OUTCOME_DONE, NULL);
}

/* Exponential backoff with jitter: half the step fixed, half random. */
long
delivery_backoff_ms(int attempts)
{
	long		step = BACKOFF_BASE_MS;

	for (int i = 1; i < attempts && step < BACKOFF_CAP_MS; i++)
		step *= 2;
	step = Min(step, BACKOFF_CAP_MS);
	return step / 2 + (long) (pg_prng_double(&pg_global_prng_state) * (step / 2));
}
