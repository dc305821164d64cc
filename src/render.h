/*
 * render.h
 *		What a ticket says: subject, HTML body, tags and custom field values.
 */
#ifndef FSB_RENDER_H
#define FSB_RENDER_H

#include "postgres.h"

#include "lib/stringinfo.h"
#include "nodes/pg_list.h"

typedef struct TicketContent
{
	char		target_kind;	/* 'a' alert, 'i' incident */
	int64		target_id;
	char	   *subject;		/* plain text */
	char	   *marker;			/* subject prefix that identifies the target */
	char	   *html;			/* body of the first (customer) thread */
	List	   *tags;			/* of char * */
	int			severity;		/* 0 when unknown */
	char	   *computer;		/* NULL when absent */
	char	   *mitre_tactic;	/* NULL when absent */
	int64	   *member_alerts;	/* incident: the alerts its body lists */
	int			n_member_alerts;
} TicketContent;

extern TicketContent *render_ticket(char target_kind, int64 target_id,
									const char *row_json);
extern char *render_marker(char target_kind, int64 target_id);
extern const char *render_severity_name(int severity);
extern void render_escape_html(StringInfo out, const char *text);
extern char *render_alert_joined_note(const char *alert_json, int64 alert_id);
extern char *render_siem_note(const char *text, const char *author);
extern char *render_html_to_text(const char *html);

#endif
