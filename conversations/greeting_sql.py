"""The SQL behind the first touch: four statements per greeting instead of ~20 ORM calls.

Profiling showed a greeting spending most of its CPU building ORM queries and
in round trips (19 statements in 4 transactions). Each step below is one
statement, atomic on its own: data-modifying CTEs either all apply or none do.

- LOAD: the ledger row and the pickup timeline (once per event), and
  everything the greeting needs to know about the lead.
- CLAIM: greeting (unique per lead), conversation, QUEUED message, timeline.
- ACCEPTED: message and greeting state, timeline, first response, and the
  `lead.status_changed` outbox row with its relay wake-up.
- FIRST_RESPONSE: the last part alone, for a status webhook that proves a
  greeting went out whose answer the worker never stored.
"""

from conversations.models import Conversation, Greeting, Message
from conversations.timeline import ms_between
from leads.models import Contact, Lead, LeadEvent, Submission
from swiftex.events import OUTBOX_CHANNEL
from swiftex.events.idempotency import LEDGER
from swiftex.models import OutboxEvent

_LEAD = Lead._meta.db_table
_CONTACT = Contact._meta.db_table
_SUBMISSION = Submission._meta.db_table
_EVENT = LeadEvent._meta.db_table
_GREETING = Greeting._meta.db_table
_CONVERSATION = Conversation._meta.db_table
_MESSAGE = Message._meta.db_table
_OUTBOX = OutboxEvent._meta.db_table

# Returns one row (nothing if the lead is gone): lead, contact, the greeting if
# one exists, the first submission's message, and when the contact last wrote
# on WhatsApp (the 24-hour window).
LOAD = f"""
WITH ledger AS (
    INSERT INTO {LEDGER} (consumer, event_id, processed_at) VALUES (%(consumer)s, %(event_id)s, %(now)s)
    ON CONFLICT (consumer, event_id) DO NOTHING
    RETURNING 1
), pickup AS (
    INSERT INTO {_EVENT} (lead_id, kind, data, occurred_at)
    SELECT lead.id, entry.kind,
           entry.data || jsonb_build_object(
               'since_capture_ms', {ms_between("lead.captured_at", "entry.at")}),
           entry.at
    FROM ledger, {_LEAD} AS lead,
         (VALUES ('first_touch.started', %(started_data)s::jsonb, %(now)s::timestamptz),
                 ('event.published', %(published_data)s::jsonb, %(published)s::timestamptz)) AS entry(kind, data, at)
    WHERE lead.id = %(lead_id)s AND entry.at IS NOT NULL
)
SELECT lead.organization_id, lead.contact_id, lead.status, lead.source, lead.campaign, lead.captured_at,
       contact.name, contact.phone, contact.consent,
       (SELECT id FROM {_GREETING} WHERE lead_id = lead.id),
       (SELECT message FROM {_SUBMISSION} WHERE lead_id = lead.id ORDER BY id LIMIT 1),
       (SELECT last_inbound_at FROM {_CONVERSATION} WHERE contact_id = lead.contact_id AND channel = 'whatsapp')
FROM {_LEAD} AS lead JOIN {_CONTACT} AS contact ON contact.id = lead.contact_id
WHERE lead.id = %(lead_id)s
"""

# Returns (greeting id, message id, conversation id), or nothing if the lead
# already had a greeting (then nothing at all was written).
CLAIM = f"""
WITH g AS (
    INSERT INTO {_GREETING} (organization_id, lead_id, state, reason, text, text_source, model_ms, model_error, created_at)
    VALUES (%(org)s, %(lead_id)s, 'sending', '', %(text)s, %(source)s, %(model_ms)s, %(model_error)s, %(now)s)
    ON CONFLICT (lead_id) DO NOTHING
    RETURNING id
), c AS (
    INSERT INTO {_CONVERSATION} (organization_id, contact_id, channel, created_at)
    SELECT %(org)s, %(contact_id)s, %(channel)s, %(now)s FROM g
    ON CONFLICT (contact_id, channel) DO UPDATE SET channel = EXCLUDED.channel
    RETURNING id
), m AS (
    INSERT INTO {_MESSAGE} (organization_id, conversation_id, lead_id, greeting_id, direction, channel, body, template_name,
                            provider_message_id, status, attempts, error_code, error_title, created_at)
    SELECT %(org)s, c.id, %(lead_id)s, g.id, 'outbound', %(channel)s, %(body)s, %(template)s, NULL, 'queued', 0, '', '', %(now)s
    FROM g, c
    RETURNING id, conversation_id
), composed AS (
    INSERT INTO {_EVENT} (lead_id, kind, data, occurred_at)
    SELECT %(lead_id)s, 'greeting.composed', %(composed)s::jsonb, %(now)s FROM g
)
SELECT g.id, m.id, m.conversation_id FROM g, m
"""

def _first_response_ctes(guard: str = "") -> str:
    """Expects %(lead_id)s, %(now)s, %(now_iso)s. Sets the first response once and raises
    `lead.status_changed` for it (crmsync, analytics). `guard`: a further condition."""
    return f"""
first_response AS (
    UPDATE {_LEAD} SET first_response_at = %(now)s, status = CASE WHEN status = 'new' THEN 'contacted' ELSE status END
    WHERE id = %(lead_id)s AND first_response_at IS NULL{guard}
    RETURNING organization_id, status, captured_at
), outbox AS (
    INSERT INTO {_OUTBOX} (event_id, event_type, organization_id, payload, created_at, attempts, last_error)
    SELECT gen_random_uuid(), 'lead.status_changed', organization_id,
           jsonb_build_object('lead_id', %(lead_id)s::bigint, 'status', status, 'first_response_at', %(now_iso)s::text,
                              'first_response_ms', {ms_between("captured_at", "%(now)s")}),
           %(now)s, 0, ''
    FROM first_response
    RETURNING id
), wake AS (
    SELECT pg_notify('{OUTBOX_CHANNEL}', '') FROM outbox
)"""

# Returns one row: the lead's captured_at if this statement set its first response
# (else NULL), and the wake-up count (a SELECT CTE only runs when something reads it).
_FIRST_RESPONSE_RESULT = "\nSELECT (SELECT captured_at FROM first_response), (SELECT count(*) FROM wake)"

FIRST_RESPONSE = "WITH " + _first_response_ctes() + _FIRST_RESPONSE_RESULT

# A message failed meanwhile (a `failed` status that came first, or the sweep)
# keeps its failure; the provider's id and time are still recorded, and it is not
# the lead's first response. The guard also makes the message row (m) be locked
# before the lead's, the order the status applier takes them in: no deadlock.
_NOT_FAILED = "EXISTS (SELECT 1 FROM m WHERE m.status <> 'failed')"
ACCEPTED = f"""
WITH m AS (
    UPDATE {_MESSAGE} SET provider_message_id = %(provider_message_id)s, accepted_at = COALESCE(accepted_at, %(now)s),
        status = CASE WHEN status IN ('sending', 'queued') THEN 'accepted' ELSE status END,
        error_code = CASE WHEN status = 'failed' THEN error_code ELSE '' END,
        error_title = CASE WHEN status = 'failed' THEN error_title ELSE '' END
    WHERE id = %(message_id)s
    RETURNING status
), g AS (
    UPDATE {_GREETING} SET state = 'done' WHERE id = %(greeting_id)s AND {_NOT_FAILED}
    RETURNING id
), accepted AS (
    INSERT INTO {_EVENT} (lead_id, kind, data, occurred_at) VALUES (%(lead_id)s, 'message.accepted', %(data)s::jsonb, %(now)s)
), """ + _first_response_ctes(guard=f"\n      AND {_NOT_FAILED}") + _FIRST_RESPONSE_RESULT
