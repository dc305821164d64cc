/*
 * http_engine.h
 *		Event-driven HTTP client for the worker (libcurl multi interface).
 */
#ifndef FSB_HTTP_ENGINE_H
#define FSB_HTTP_ENGINE_H

#include "postgres.h"

#include "nodes/pg_list.h"

typedef struct HttpRequest
{
	/* Set by the caller before http_submit(). */
	const char *method;			/* "GET", "POST" or "PUT" */
	char	   *url;			/* absolute URL */
	char	   *body;			/* JSON text, or NULL */
	void	   *owner;			/* opaque to the engine */

	/* Set by the engine when the transfer ends. */
	long		http_status;	/* 0 when no response arrived */
	int			curl_code;		/* CURLcode, 0 on a completed exchange */
	bool		maybe_delivered;	/* bytes of the request left this host */
	char	   *error;			/* transport error text, NULL if none */
	char	   *response;		/* body, NUL-terminated, never NULL */
	size_t		response_len;
	int			retry_after_s;	/* Retry-After in seconds, -1 if absent */
	int64		resource_id;	/* Resource-ID header, 0 if absent */
	double		elapsed_ms;

	/* Engine private. */
	void	   *transfer;
} HttpRequest;

extern void http_engine_start(void);
extern void http_engine_shutdown(void);
extern void http_submit(HttpRequest *req);
extern int	http_in_flight(void);
extern bool http_wait(long timeout_ms, List **completed);

#endif
