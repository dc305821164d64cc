/*
 * webhook.h
 *		Applying FreeScout conversation state to the SIEM (webhooks and
 *		reconciliation share it).
 */
#ifndef FSB_WEBHOOK_H
#define FSB_WEBHOOK_H

#include "postgres.h"

struct cJSON;

typedef struct WebhookResult
{
	int64		conversation_id;
	int64		ticket_id;
	bool		status_changed;
	bool		assignee_changed;
	bool		stale;			/* older than what was applied */
	int			siem_rows_changed;
	int			notes_added;
	const char *ignored;		/* why nothing was applied, or NULL */
} WebhookResult;

extern bool webhook_signature_valid(const char *body, size_t body_len,
									const char *signature, const char *secret,
									const char **scheme);
extern void webhook_apply_conversation(const struct cJSON *conversation,
									   WebhookResult *result);
extern char *webhook_result_json(const WebhookResult *result);

#endif
