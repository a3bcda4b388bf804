"""The SQL behind lead ingest.

A new person (the common case) is stored by ONE statement: a chain of
data-modifying CTEs that inserts contact, lead, submission, timeline and the
`lead.created` outbox row, and wakes the outbox relay. A single statement is
atomic on its own, so it runs without BEGIN/COMMIT round trips; if any part fails (a duplicate external_id
hits its unique key) the whole statement leaves nothing behind.

An imported row (`imported`, a CSV list) opens its lead flagged and writes no
`lead.created` outbox row: the import raises one `lead.imported` event per chunk
instead (imports/), so a list never queues ahead of live leads.

When the contact already exists the service finds it and its open lead first
(leads/services.py), then runs the same tail with those ids. Both paths share
TAIL, so what a submission writes is defined once.
"""

from leads.models import Contact, Lead, LeadEvent, Submission
from swiftex.events import OUTBOX_CHANNEL
from swiftex.models import OutboxEvent

_CONTACT = Contact._meta.db_table
_LEAD = Lead._meta.db_table
_SUBMISSION = Submission._meta.db_table
_EVENT = LeadEvent._meta.db_table
_OUTBOX = OutboxEvent._meta.db_table

# Expects a CTE `src(lead_id, contact_id, created)`; returns
# (submission_id, lead_id, contact_id, relay wake-ups sent).
TAIL = f"""
, s AS (
    INSERT INTO {_SUBMISSION}
        (organization_id, contact_id, lead_id, source, campaign, external_id, message, payload, received_at, opened_lead)
    SELECT %(org)s, src.contact_id, src.lead_id, %(source)s, %(campaign)s, %(external_id)s, %(message)s,
           %(payload)s::jsonb, %(now)s, src.created
    FROM src
    RETURNING id, lead_id, contact_id, opened_lead
), timeline AS (
    INSERT INTO {_EVENT} (lead_id, kind, data, occurred_at)
    SELECT s.lead_id, 'lead.created',
           jsonb_build_object('source', %(source)s::text)
           || CASE WHEN %(imported)s::boolean THEN '{{"imported": true}}'::jsonb ELSE '{{}}'::jsonb END,
           %(now)s
    FROM s WHERE s.opened_lead
    UNION ALL
    SELECT s.lead_id, 'submission.received',
           jsonb_build_object('submission_id', s.id, 'source', %(source)s::text, 'campaign', %(campaign)s::text), %(now)s
    FROM s
), outbox AS (
    INSERT INTO {_OUTBOX} (event_id, event_type, organization_id, payload, created_at, attempts, last_error)
    SELECT gen_random_uuid(), 'lead.created', %(org)s,
           jsonb_build_object('lead_id', s.lead_id, 'contact_id', s.contact_id, 'submission_id', s.id,
                              'source', %(source)s::text, 'campaign', %(campaign)s::text, 'captured_at', %(now_iso)s::text),
           %(now)s, 0, ''
    FROM s WHERE s.opened_lead AND NOT %(imported)s::boolean
    RETURNING id
), wake AS (
    -- Wakes the relay at commit. A plain SELECT in WITH runs only if referenced,
    -- hence the count in the final SELECT.
    SELECT pg_notify('{OUTBOX_CHANNEL}', '') FROM outbox
)
SELECT s.id, s.lead_id, s.contact_id, (SELECT count(*) FROM wake) FROM s
"""

# Inserts nothing at all when the phone or email already belongs to a contact
# (ON CONFLICT DO NOTHING without a target covers both unique keys).
NEW_CONTACT = f"""
WITH c AS (
    INSERT INTO {_CONTACT} (organization_id, name, phone, email, consent, consent_at, created_at, updated_at)
    VALUES (%(org)s, %(name)s, %(phone)s, %(email)s, %(consent)s, %(consent_at)s, %(now)s, %(now)s)
    ON CONFLICT DO NOTHING
    RETURNING id
), l AS (
    INSERT INTO {_LEAD} (organization_id, contact_id, status, source, campaign, routing, captured_at, imported, created_at)
    SELECT %(org)s, c.id, 'new', %(source)s, %(campaign)s, %(routing)s::jsonb, %(now)s, %(imported)s::boolean, %(now)s FROM c
    RETURNING id, contact_id
), src AS (
    SELECT l.id AS lead_id, l.contact_id, true AS created FROM l
)""" + TAIL

KNOWN_LEAD = """
WITH src AS (
    SELECT %(lead_id)s::bigint AS lead_id, %(contact_id)s::bigint AS contact_id, %(created)s::boolean AS created
)""" + TAIL
