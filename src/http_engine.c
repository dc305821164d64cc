/*
 * http_engine.c
 *		The worker's HTTP engine: libcurl's multi interface, driven by the same
 *		WaitEventSet that carries the worker's latch.
 *
 * One wait covers everything the worker reacts to: a wake from a committing
 * backend, postmaster death, and activity on any socket curl is using.  curl
 * tells us which sockets it wants watched (socket callback) and when it next
 * needs a timeout call (timer callback); we never spin or poll.  Connections
 * stay in curl's cache between requests, so requests to FreeScout reuse
 * keep-alive connections.
 *
 * Transfers own malloc'd curl state.  Anything that can ereport while such
 * state is live runs under PG_TRY so the handle is released on every path.
 * Callbacks invoked by curl never palloc: an error thrown through libcurl's
 * stack would corrupt it.
 */
#include "freescout_bridge.h"
#include "http_engine.h"

#include <curl/curl.h>

#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#define MAX_WATCHED_SOCKETS		1024
#define MAX_RESPONSE_BYTES		(32 * 1024 * 1024)
#define USER_AGENT				"freescout_bridge/1.0"

/* Per-transfer state that libcurl writes into; malloc'd, never palloc'd. */
typedef struct Transfer
{
	struct Transfer *prev;		/* all live transfers, for shutdown */
	struct Transfer *next;
	CURL	   *easy;
	struct curl_slist *headers;
	char	   *buf;
	size_t		len;
	size_t		cap;
	bool		overflow;
	int			retry_after_s;
	int64		resource_id;
	char		errbuf[CURL_ERROR_SIZE];
} Transfer;

typedef struct WatchedSocket
{
	curl_socket_t fd;
	int			what;			/* CURL_POLL_IN / OUT / INOUT */
} WatchedSocket;

static CURLM *multi = NULL;
static Transfer *live_transfers = NULL;
static int	in_flight = 0;
static WatchedSocket watched[MAX_WATCHED_SOCKETS];
static int	n_watched = 0;
static bool watch_changed = true;
static WaitEventSet *wait_set = NULL;
static long curl_timeout_ms = -1;	/* -1: curl needs no timeout call */
static TimestampTz curl_timer_set_at = 0;

/* ---------- curl callbacks (no palloc, no ereport) ---------- */

static int
on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	int			i;

	for (i = 0; i < n_watched; i++)
		if (watched[i].fd == fd)
			break;

	if (what == CURL_POLL_REMOVE)
	{
		if (i < n_watched)
			watched[i] = watched[--n_watched];
	}
	else if (i < n_watched)
		watched[i].what = what;
	else if (n_watched < MAX_WATCHED_SOCKETS)
	{
		watched[n_watched].fd = fd;
		watched[n_watched].what = what;
		n_watched++;
	}
	else
		return -1;				/* curl fails this transfer */

	watch_changed = true;
	return 0;
}

static int
on_timer(CURLM *m, long timeout_ms, void *userp)
{
	curl_timeout_ms = timeout_ms;
	curl_timer_set_at = GetCurrentTimestamp();
	return 0;
}

static size_t
on_body(char *data, size_t size, size_t nmemb, void *userp)
{
	Transfer   *t = (Transfer *) userp;
	size_t		n = size * nmemb;

	if (t->len + n + 1 > t->cap)
	{
		size_t		want = Max(t->cap * 2, t->len + n + 1);
		char	   *grown;

		if (want > MAX_RESPONSE_BYTES)
		{
			t->overflow = true;
			return 0;			/* aborts the transfer */
		}
		grown = realloc(t->buf, Max(want, 1024));
		if (grown == NULL)
			return 0;
		t->buf = grown;
		t->cap = Max(want, 1024);
	}
	memcpy(t->buf + t->len, data, n);
	t->len += n;
	t->buf[t->len] = '\0';
	return n;
}

static bool
header_is(const char *line, size_t len, const char *name, const char **value)
{
	size_t		nlen = strlen(name);

	if (len <= nlen || line[nlen] != ':' || pg_strncasecmp(line, name, nlen) != 0)
		return false;
	*value = line + nlen + 1;
	while (**value == ' ' || **value == '\t')
		(*value)++;
	return true;
}

static size_t
on_header(char *line, size_t size, size_t nitems, void *userp)
{
	Transfer   *t = (Transfer *) userp;
	size_t		len = size * nitems;
	const char *value;
	char		copy[256];

	if (header_is(line, len, "Resource-ID", &value))
		t->resource_id = strtoll(value, NULL, 10);
	else if (header_is(line, len, "Retry-After", &value))
	{
		size_t		vlen = Min(len - (value - line), sizeof(copy) - 1);

		memcpy(copy, value, vlen);
		copy[vlen] = '\0';
		if (copy[0] >= '0' && copy[0] <= '9')
			t->retry_after_s = (int) Min(strtol(copy, NULL, 10), 86400);
		else
		{
			/* an HTTP-date */
			time_t		when = curl_getdate(copy, NULL);

			if (when > 0)
				t->retry_after_s = (int) Max(0, Min(when - time(NULL), 86400));
		}
	}
	return len;
}

/* ---------- lifecycle ---------- */

void
http_engine_start(void)
{
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		elog(ERROR, "could not initialise libcurl");
	multi = curl_multi_init();
	if (multi == NULL)
		elog(ERROR, "could not create a libcurl multi handle");
	curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, on_socket);
	curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, on_timer);
	/* Idle connections kept for reuse: one per request we may run at once. */
	curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, (long) fsb_max_concurrency);
}

static void
release_transfer(Transfer *t)
{
	if (t->prev)
		t->prev->next = t->next;
	else if (live_transfers == t)
		live_transfers = t->next;
	if (t->next)
		t->next->prev = t->prev;
	if (t->easy)
	{
		if (multi)
			curl_multi_remove_handle(multi, t->easy);
		curl_easy_cleanup(t->easy);
	}
	curl_slist_free_all(t->headers);
	free(t->buf);
	free(t);
}

/* Abandons whatever is in flight; used at process exit. */
void
http_engine_shutdown(void)
{
	if (multi == NULL)
		return;
	while (live_transfers)
		release_transfer(live_transfers);
	in_flight = 0;
	curl_multi_cleanup(multi);
	multi = NULL;
	curl_global_cleanup();
	if (wait_set)
		FreeWaitEventSet(wait_set);
	wait_set = NULL;
}

int
http_in_flight(void)
{
	return in_flight;
}

/* ---------- submitting ---------- */

static void
append_header(Transfer *t, const char *line)
{
	struct curl_slist *grown = curl_slist_append(t->headers, line);

	if (grown == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory while building an HTTP request")));
	t->headers = grown;
}

/*
 * Starts a transfer.  The request struct must stay valid until it comes
 * back from http_wait().  The API key is copied into curl's header list and
 * the palloc'd copy is wiped, so it lingers in no memory context.
 */
void
http_submit(HttpRequest *req)
{
	Transfer   *t = calloc(1, sizeof(Transfer));
	CURL	   *easy;

	if (t == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory while starting an HTTP request")));
	t->retry_after_s = -1;
	easy = t->easy = curl_easy_init();

	PG_TRY();
	{
		char	   *key_header;

		if (easy == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("could not create a libcurl handle")));

		key_header = psprintf("X-FreeScout-API-Key: %s", fsb_api_key ? fsb_api_key : "");
		append_header(t, key_header);
		explicit_bzero(key_header, strlen(key_header));
		pfree(key_header);
		append_header(t, "Accept: application/json");
		/* curl would otherwise wait for "100 Continue" on larger bodies */
		append_header(t, "Expect:");
		if (req->body)
			append_header(t, "Content-Type: application/json; charset=utf-8");

		curl_easy_setopt(easy, CURLOPT_URL, req->url);
		curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, req->method);
		if (req->body)
		{
			curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE, (long) strlen(req->body));
			curl_easy_setopt(easy, CURLOPT_POSTFIELDS, req->body);
		}
		else if (strcmp(req->method, "GET") == 0)
			curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
		/*
		 * When a reused keep-alive connection dies before any answer,
		 * libcurl silently sends the request again on a new one.  For a
		 * POST that can create a second conversation or note behind our
		 * back, defeating the lookup-before-create.  Non-idempotent
		 * requests therefore always take a fresh connection, so a failure
		 * reaches us; GET and PUT keep reusing connections.
		 */
		if (strcmp(req->method, "POST") == 0)
			curl_easy_setopt(easy, CURLOPT_FRESH_CONNECT, 1L);
		curl_easy_setopt(easy, CURLOPT_HTTPHEADER, t->headers);
		curl_easy_setopt(easy, CURLOPT_USERAGENT, USER_AGENT);
		curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, fsb_allow_http ? "http,https" : "https");
		curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
		curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);
		curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L);
		curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
		curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long) fsb_request_timeout_ms);
		curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS,
						 (long) Min(fsb_request_timeout_ms, 5000));
		curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
		curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);
		curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_body);
		curl_easy_setopt(easy, CURLOPT_WRITEDATA, t);
		curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, on_header);
		curl_easy_setopt(easy, CURLOPT_HEADERDATA, t);
		curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, t->errbuf);
		curl_easy_setopt(easy, CURLOPT_PRIVATE, req);

		if (curl_multi_add_handle(multi, easy) != CURLM_OK)
			elog(ERROR, "could not add a transfer to the libcurl multi handle");
	}
	PG_CATCH();
	{
		release_transfer(t);
		PG_RE_THROW();
	}
	PG_END_TRY();

	req->transfer = t;
	t->next = live_transfers;
	if (live_transfers)
		live_transfers->prev = t;
	live_transfers = t;
	in_flight++;
}

/* ---------- waiting and completing ---------- */

static void
rebuild_wait_set(void)
{
	if (wait_set)
		FreeWaitEventSet(wait_set);
	wait_set = CreateWaitEventSet(TopMemoryContext, n_watched + 2);
	AddWaitEventToSet(wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	for (int i = 0; i < n_watched; i++)
	{
		uint32		events = 0;

		if (watched[i].what & CURL_POLL_IN)
			events |= WL_SOCKET_READABLE;
		if (watched[i].what & CURL_POLL_OUT)
			events |= WL_SOCKET_WRITEABLE;
		AddWaitEventToSet(wait_set, events, watched[i].fd, NULL, NULL);
	}
	watch_changed = false;
}

/*
 * curl's message without its timing ("... after 0 ms: ..."), so that one
 * failure always reads the same in logs and errors.
 */
static char *
transport_error_text(const char *errbuf, CURLcode code)
{
	const char *text = errbuf[0] ? errbuf : curl_easy_strerror(code);
	const char *after = strstr(text, " after ");
	const char *ms = after ? strstr(after, " ms") : NULL;

	if (after && ms && ms - after < 20)
		return psprintf("%.*s%s", (int) (after - text), text, ms + 3);
	return pstrdup(text);
}

static bool
transport_error_may_have_delivered(CURLcode code, CURL *easy)
{
	long		sent = 0;

	switch (code)
	{
		case CURLE_COULDNT_RESOLVE_HOST:
		case CURLE_COULDNT_RESOLVE_PROXY:
		case CURLE_COULDNT_CONNECT:
		case CURLE_SSL_CONNECT_ERROR:
		case CURLE_PEER_FAILED_VERIFICATION:
		case CURLE_UNSUPPORTED_PROTOCOL:
		case CURLE_URL_MALFORMAT:
			return false;
		default:
			curl_easy_getinfo(easy, CURLINFO_REQUEST_SIZE, &sent);
			return sent > 0;
	}
}

/*
 * Moves a finished transfer's results into the request, in the request's
 * own memory context, and releases every curl resource.
 */
static void
complete_transfer(CURL *easy, CURLcode code)
{
	HttpRequest *req = NULL;
	Transfer   *t;
	MemoryContext oldcxt;
	double		total = 0;

	curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **) &req);
	t = (Transfer *) req->transfer;

	curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &req->http_status);
	curl_easy_getinfo(easy, CURLINFO_TOTAL_TIME, &total);
	req->elapsed_ms = total * 1000.0;
	req->curl_code = (int) code;
	req->retry_after_s = t->retry_after_s;
	req->resource_id = t->resource_id;
	req->maybe_delivered = (code == CURLE_OK) ||
		transport_error_may_have_delivered(code, easy);

	PG_TRY();
	{
		oldcxt = MemoryContextSwitchTo(GetMemoryChunkContext(req));
		req->response_len = t->len;
		req->response = palloc(t->len + 1);
		if (t->len > 0)
			memcpy(req->response, t->buf, t->len);
		req->response[t->len] = '\0';
		if (code != CURLE_OK)
			req->error = t->overflow ?
				psprintf("response larger than %d bytes", MAX_RESPONSE_BYTES) :
				transport_error_text(t->errbuf, code);
		MemoryContextSwitchTo(oldcxt);
	}
	PG_FINALLY();
	{
		release_transfer(t);
		req->transfer = NULL;
		in_flight--;
	}
	PG_END_TRY();
}

static void
collect_completions(List **completed)
{
	CURLMsg    *msg;
	int			pending;

	while ((msg = curl_multi_info_read(multi, &pending)) != NULL)
	{
		HttpRequest *req = NULL;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &req);
		complete_transfer(msg->easy_handle, msg->data.result);
		*completed = lappend(*completed, req);
	}
}

/*
 * Sleeps until the latch is set, a socket is ready, curl's timer fires or
 * timeout_ms passes; then lets curl make progress.  Finished requests are
 * appended to *completed.  Returns true when the latch was set.
 */
bool
http_wait(long timeout_ms, List **completed)
{
	WaitEvent	events[64];
	int			nevents;
	int			running;
	bool		latch_set = false;
	bool		socket_ready = false;
	long		timeout = timeout_ms;

	if (curl_timeout_ms >= 0)
	{
		long		elapsed = (long) ((GetCurrentTimestamp() - curl_timer_set_at) / 1000);

		timeout = Min(timeout, Max(0, curl_timeout_ms - elapsed));
	}
	if (watch_changed || wait_set == NULL)
		rebuild_wait_set();

	nevents = WaitEventSetWait(wait_set, timeout, events, lengthof(events),
							   PG_WAIT_EXTENSION);

	for (int i = 0; i < nevents; i++)
	{
		WaitEvent  *ev = &events[i];

		if (ev->events & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			latch_set = true;
		}
		else if (ev->events & (WL_SOCKET_READABLE | WL_SOCKET_WRITEABLE))
		{
			int			mask = 0;

			if (ev->events & WL_SOCKET_READABLE)
				mask |= CURL_CSELECT_IN;
			if (ev->events & WL_SOCKET_WRITEABLE)
				mask |= CURL_CSELECT_OUT;
			curl_multi_socket_action(multi, ev->fd, mask, &running);
			socket_ready = true;
		}
	}

	/* Give curl its timeout call when due (it also handles new transfers). */
	if (curl_timeout_ms >= 0 &&
		TimestampDifferenceExceeds(curl_timer_set_at, GetCurrentTimestamp(),
								   (int) curl_timeout_ms))
	{
		curl_timeout_ms = -1;
		curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
	}
	else if (!socket_ready && !latch_set && in_flight > 0 && nevents == 0)
		curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);

	collect_completions(completed);
	return latch_set;
}
