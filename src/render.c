/*
 * render.c
 *		Turns an alert or incident row into the ticket FreeScout shows: the
 *		spec's HTML template, subject, tags and custom field values.
 *
 * The row arrives as the JSON of to_jsonb(row), so optional SIEM columns are
 * simply absent keys and the template shows "n/a" for them.  Every value
 * from the row is HTML-escaped: alert fields are attacker-influenced (a
 * process name, a user name) and FreeScout renders thread bodies as HTML.
 */
#include "freescout_bridge.h"
#include "render.h"

#include <cjson/cJSON.h>

#include "utils/builtins.h"

static const char *const severity_names[] = {"Unknown", "Low", "Medium", "High", "Critical"};

const char *
render_severity_name(int severity)
{
	return (severity >= 1 && severity <= 4) ? severity_names[severity] : severity_names[0];
}

void
render_escape_html(StringInfo out, const char *text)
{
	for (const char *p = text; *p; p++)
	{
		switch (*p)
		{
			case '&':
				appendStringInfoString(out, "&amp;");
				break;
			case '<':
				appendStringInfoString(out, "&lt;");
				break;
			case '>':
				appendStringInfoString(out, "&gt;");
				break;
			case '"':
				appendStringInfoString(out, "&quot;");
				break;
			case '\'':
				appendStringInfoString(out, "&#39;");
				break;
			case '\n':
				appendStringInfoString(out, "<br>");
				break;
			case '\r':
				break;
			default:
				appendStringInfoChar(out, *p);
		}
	}
}

/* A row value as display text, or NULL for an absent or null column. */
static char *
field_text(const cJSON *row, const char *key)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(row, key);

	if (item == NULL || cJSON_IsNull(item))
		return NULL;
	if (cJSON_IsString(item))
		return pstrdup(item->valuestring);
	if (cJSON_IsBool(item))
		return pstrdup(cJSON_IsTrue(item) ? "true" : "false");
	if (cJSON_IsNumber(item))
	{
		double		v = item->valuedouble;

		if (v == (double) (int64) v)
			return psprintf(INT64_FORMAT, (int64) v);
		return psprintf("%g", v);
	}
	return fsb_json_print(item);
}

static void
append_item(StringInfo out, const char *label, const char *value)
{
	appendStringInfo(out, "<li><strong>%s:</strong> ", label);
	render_escape_html(out, value ? value : "n/a");
	appendStringInfoString(out, "</li>\n");
}

char *
render_marker(char target_kind, int64 target_id)
{
	return psprintf("SIEM %s #" INT64_FORMAT ":",
					target_kind == 'i' ? "Incident" : "Alert", target_id);
}

static void
append_siem_link(StringInfo out, const char *path, int64 id)
{
	StringInfoData href;
	const char *base = fsb_siem_url ? fsb_siem_url : "";
	size_t		len = strlen(base);

	initStringInfo(&href);
	appendBinaryStringInfo(&href, base, (len > 0 && base[len - 1] == '/') ? len - 1 : len);
	appendStringInfo(&href, "/%s/" INT64_FORMAT, path, id);
	appendStringInfoString(out, "<p><a href=\"");
	render_escape_html(out, href.data);
	appendStringInfoString(out, "\">View in SIEM</a></p>\n");
}

/* "Credential Access" -> "credential-access", for a tag. */
static char *
tag_slug(const char *text)
{
	StringInfoData buf;
	bool		dash = false;

	initStringInfo(&buf);
	for (const unsigned char *p = (const unsigned char *) text; *p && buf.len < 48; p++)
	{
		if (isalnum(*p))
		{
			if (dash && buf.len > 0)
				appendStringInfoChar(&buf, '-');
			appendStringInfoChar(&buf, (char) tolower(*p));
			dash = false;
		}
		else
			dash = true;
	}
	return buf.len > 0 ? buf.data : NULL;
}

static void
render_alert_body(StringInfo out, const cJSON *row, TicketContent *c)
{
	char	   *severity = field_text(row, "severity");

	appendStringInfoString(out, "<h2>Alert details</h2>\n<ul>\n");
	append_item(out, "Alert ID", field_text(row, "alert_id"));
	append_item(out, "Title", field_text(row, "title"));
	append_item(out, "Severity",
				psprintf("%s (%s)", render_severity_name(c->severity),
						 severity ? severity : "?"));
	append_item(out, "Status", field_text(row, "status"));
	append_item(out, "Computer", c->computer);
	append_item(out, "User", field_text(row, "username"));
	append_item(out, "Source IP", field_text(row, "source_ip"));
	append_item(out, "First seen", field_text(row, "first_seen_at"));
	append_item(out, "Event count", field_text(row, "event_count"));
	if (field_text(row, "incident_id"))
		append_item(out, "Incident", field_text(row, "incident_id"));
	appendStringInfoString(out, "</ul>\n<h3>Description</h3>\n<p>");
	render_escape_html(out, field_text(row, "description") ? field_text(row, "description") : "n/a");
	appendStringInfoString(out, "</p>\n<h3>MITRE ATT&amp;CK</h3>\n<ul>\n");
	append_item(out, "Tactic", c->mitre_tactic);
	append_item(out, "Technique", field_text(row, "mitre_attack_technique"));
	appendStringInfoString(out, "</ul>\n");
	append_siem_link(out, "alerts", c->target_id);
}

static void
render_incident_body(StringInfo out, const cJSON *row, TicketContent *c)
{
	const cJSON *alerts = cJSON_GetObjectItemCaseSensitive(row, "_alerts");
	const cJSON *alert;

	appendStringInfoString(out, "<h2>Incident details</h2>\n<ul>\n");
	append_item(out, "Incident ID", field_text(row, "incident_id"));
	append_item(out, "Title", field_text(row, "title"));
	append_item(out, "Severity",
				psprintf("%s (%d)", render_severity_name(c->severity), c->severity));
	append_item(out, "Status", field_text(row, "status"));
	append_item(out, "Created", field_text(row, "created_at"));
	appendStringInfoString(out, "</ul>\n<h3>Description</h3>\n<p>");
	render_escape_html(out, field_text(row, "description") ? field_text(row, "description") : "n/a");
	appendStringInfoString(out, "</p>\n");

	if (cJSON_IsArray(alerts) && cJSON_GetArraySize(alerts) > 0)
	{
		appendStringInfo(out, "<h3>Correlated alerts (%d)</h3>\n<ul>\n",
						 cJSON_GetArraySize(alerts));
		c->member_alerts = palloc(sizeof(int64) * cJSON_GetArraySize(alerts));
		cJSON_ArrayForEach(alert, alerts)
		{
			char	   *sev = field_text(alert, "severity");
			int64		member_id;

			if (fsb_json_int64(alert, "alert_id", &member_id))
				c->member_alerts[c->n_member_alerts++] = member_id;

			appendStringInfoString(out, "<li>#");
			render_escape_html(out, field_text(alert, "alert_id") ? field_text(alert, "alert_id") : "?");
			appendStringInfoString(out, " ");
			render_escape_html(out, field_text(alert, "title") ? field_text(alert, "title") : "");
			appendStringInfo(out, " (%s)</li>\n",
							 render_severity_name(sev ? atoi(sev) : 0));
		}
		appendStringInfoString(out, "</ul>\n");
	}
	append_siem_link(out, "incidents", c->target_id);
}

/*
 * Builds the ticket for one alert ('a') or incident ('i') from the JSON of
 * its row.  The marker ends the subject's fixed prefix and is repeated in a
 * reference line, so a conversation can be recognised again after a crash.
 */
TicketContent *
render_ticket(char target_kind, int64 target_id, const char *row_json)
{
	TicketContent *c = palloc0(sizeof(TicketContent));
	cJSON	   *row = cJSON_Parse(row_json);
	StringInfoData html;
	char	   *title;
	char	   *severity;
	char	   *slug;

	if (row == NULL || !cJSON_IsObject(row))
		elog(ERROR, "row of %s " INT64_FORMAT " is not a JSON object",
			 target_kind == 'i' ? "incident" : "alert", target_id);

	c->target_kind = target_kind;
	c->target_id = target_id;
	severity = field_text(row, "severity");
	c->severity = severity ? atoi(severity) : 0;
	c->computer = field_text(row, "computer");
	c->mitre_tactic = field_text(row, "mitre_attack_tactic");
	c->marker = render_marker(target_kind, target_id);

	title = field_text(row, "title");
	/* FreeScout stores subjects up to 998 characters */
	c->subject = psprintf("%s %.900s", c->marker, title ? title : "(untitled)");

	initStringInfo(&html);
	if (target_kind == 'i')
		render_incident_body(&html, row, c);
	else
		render_alert_body(&html, row, c);
	appendStringInfo(&html, "<p>Reference: freescout_bridge %s:" INT64_FORMAT "</p>\n",
					 target_kind == 'i' ? "incident" : "alert", target_id);
	c->html = html.data;

	c->tags = list_make1(pstrdup("siem"));
	if (target_kind == 'i')
		c->tags = lappend(c->tags, pstrdup("incident"));
	if (c->severity >= 1 && c->severity <= 4)
		c->tags = lappend(c->tags, tag_slug(render_severity_name(c->severity)));
	if (c->mitre_tactic && (slug = tag_slug(c->mitre_tactic)) != NULL)
		c->tags = lappend(c->tags, slug);

	cJSON_Delete(row);
	return c;
}

/* Note added to an incident's ticket when an alert joins the incident. */
char *
render_alert_joined_note(const char *alert_json, int64 alert_id)
{
	cJSON	   *row = cJSON_Parse(alert_json);
	StringInfoData out;
	char	   *title = row ? field_text(row, "title") : NULL;
	char	   *severity = row ? field_text(row, "severity") : NULL;

	initStringInfo(&out);
	appendStringInfo(&out, "<p>Alert #" INT64_FORMAT " joined this incident: ", alert_id);
	render_escape_html(&out, title ? title : "(untitled)");
	appendStringInfo(&out, " (%s).</p>\n", render_severity_name(severity ? atoi(severity) : 0));
	append_siem_link(&out, "alerts", alert_id);
	if (row)
		cJSON_Delete(row);
	return out.data;
}

/* A note written in the SIEM, as the HTML of a FreeScout note thread. */
char *
render_siem_note(const char *text, const char *author)
{
	StringInfoData out;

	initStringInfo(&out);
	appendStringInfoString(&out, "<p>");
	render_escape_html(&out, text);
	appendStringInfoString(&out, "</p>\n<p><em>SIEM note by ");
	render_escape_html(&out, author && author[0] ? author : "SIEM");
	appendStringInfoString(&out, "</em></p>");
	return out.data;
}

static bool
tag_starts(const char *p, const char *name)
{
	size_t		len = strlen(name);

	return pg_strncasecmp(p, name, len) == 0 &&
		(p[len] == '>' || p[len] == ' ' || p[len] == '/' || p[len] == '\t' || p[len] == '\n');
}

/*
 * FreeScout thread bodies are HTML written by people and mail clients.  The
 * work log stores plain text: tags dropped (script and style with their
 * content), block ends as newlines, the common entities decoded.  What the
 * SIEM UI shows can then never carry markup from outside.
 */
char *
render_html_to_text(const char *html)
{
	StringInfoData out;
	const char *p = html;

	initStringInfo(&out);
	while (*p)
	{
		if (*p == '<')
		{
			const char *close = strchr(p, '>');
			bool		end_tag = p[1] == '/';
			const char *name = p + (end_tag ? 2 : 1);

			if (close == NULL)
				break;			/* an unterminated tag: drop the rest */
			if (!end_tag && (tag_starts(name, "script") || tag_starts(name, "style")))
			{
				const char *end = strcasestr(close, tag_starts(name, "script") ? "</script" : "</style");

				p = end ? end : p + strlen(p);
				continue;
			}
			if (tag_starts(name, "br") || (end_tag && (tag_starts(name, "p") ||
													   tag_starts(name, "div") ||
													   tag_starts(name, "li") ||
													   tag_starts(name, "tr"))))
				appendStringInfoChar(&out, '\n');
			p = close + 1;
		}
		else if (*p == '&')
		{
			static const struct
			{
				const char *entity;
				char		ch;
			}			entities[] = {
				{"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'},
				{"&#39;", '\''}, {"&apos;", '\''}, {"&nbsp;", ' '}
			};
			bool		decoded = false;

			for (size_t i = 0; i < lengthof(entities); i++)
			{
				size_t		len = strlen(entities[i].entity);

				if (strncmp(p, entities[i].entity, len) == 0)
				{
					appendStringInfoChar(&out, entities[i].ch);
					p += len;
					decoded = true;
					break;
				}
			}
			if (!decoded)
				appendStringInfoChar(&out, *p++);
		}
		else
			appendStringInfoChar(&out, *p++);
	}
	/* trim trailing blank lines */
	while (out.len > 0 && (out.data[out.len - 1] == '\n' || out.data[out.len - 1] == ' '))
		out.data[--out.len] = '\0';
	return out.data;
}
