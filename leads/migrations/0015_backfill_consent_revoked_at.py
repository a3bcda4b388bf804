"""Fill `consent_revoked_at` for opt-outs made before the column existed.

Without it every earlier STOP would read as "never opted out", and an imported
list or a Meta backfill could opt those contacts back in. The latest of these:
- a `consent.revoked` entry on any of the contact's leads' timelines;
- an inbound message that is one of its organization's opt-out words (a STOP
  from someone with no lead leaves no timeline entry);
- else, for a contact that once consented and no longer does (only an
  opt-out withdraws consent), its last update, no earlier than the opt-out.

One pass over the timeline's `consent.revoked` rows and the inbound messages;
reversing it does nothing (the column is dropped by 0014's reverse).
"""

from django.db import migrations

FROM_STOPS = r"""
WITH stops AS (
    SELECT l.contact_id, e.occurred_at AS at
    FROM leads_leadevent e JOIN leads_lead l ON l.id = e.lead_id
    WHERE e.kind = 'consent.revoked'
    UNION ALL
    SELECT cv.contact_id, m.created_at
    FROM conversations_message m
    JOIN conversations_conversation cv ON cv.id = m.conversation_id
    JOIN leads_organization o ON o.id = m.organization_id
    WHERE m.direction = 'inbound' AND length(m.body) <= 64
      AND lower(btrim(regexp_replace(m.body, '^\s+|\s+$', '', 'g'), '.!')) IN (
          SELECT lower(regexp_replace(word, '^\s+|\s+$', '', 'g')) FROM unnest(string_to_array(o.opt_out_keywords, ',')) AS word)
)
UPDATE leads_contact c SET consent_revoked_at = latest.at
FROM (SELECT contact_id, max(at) AS at FROM stops GROUP BY contact_id) AS latest
WHERE c.id = latest.contact_id AND c.consent_revoked_at IS NULL
"""

FALLBACK = """
UPDATE leads_contact SET consent_revoked_at = updated_at
WHERE consent_revoked_at IS NULL AND NOT consent AND consent_at IS NOT NULL
"""


class Migration(migrations.Migration):
    # Each UPDATE commits on its own: the contacts the first one touched are not kept locked
    # while the second scans the rest (live STOPs and submissions would wait on them).
    atomic = False

    dependencies = [
        ("leads", "0014_contact_consent_revoked_at"),
        ("conversations", "0006_hot_table_indexes"),
    ]

    # Two operations, not one string: with atomic = False each then commits on its own.
    operations = [migrations.RunSQL(sql, reverse_sql=migrations.RunSQL.noop) for sql in (FROM_STOPS, FALLBACK)]
