/*
 * freescout_api.h
 *		FreeScout API & Webhooks module: request bodies, URLs and response
 *		parsing.  Pure functions: no SQL, no network.
 */
#ifndef FSB_FREESCOUT_API_H
#define FSB_FREESCOUT_API_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "render.h"

typedef struct FsConversationRef
{
	int64		id;
	int64		number;
	char		status[16];		/* "active", "pending", "closed", "spam" */
} FsConversationRef;

typedef enum FsLookupResult
{
	FS_LOOKUP_FOUND,
	FS_LOOKUP_NOT_ON_PAGE,		/* more pages may hold it */
	FS_LOOKUP_ABSENT,			/* last page read: it was never created */
	FS_LOOKUP_UNPARSABLE
} FsLookupResult;

extern char *fsapi_url(const char *path_format,...) pg_attribute_printf(1, 2);
extern char *fsapi_ticket_url(int64 conversation_id);
extern char *fsapi_create_body(const TicketContent *content);
extern char *fsapi_tags_body(const List *tags);
extern char *fsapi_custom_fields_body(const TicketContent *content,
									  const char *mapping);
extern char *fsapi_status_body(const char *status);
extern char *fsapi_note_body(const char *html);
extern char *fsapi_lookup_url(TimestampTz created_since, const char *marker, int page);
extern bool fsapi_parse_created(const char *body, int64 resource_id,
								FsConversationRef *out);
extern FsLookupResult fsapi_find_marker(const char *body, const char *marker,
										int page, FsConversationRef *out);
extern char *fsapi_describe_error(long http_status, const char *body);
extern bool fsapi_valid_status(const char *status);

#endif
