import factory

from leads.models import ApiKey, Organization


class OrganizationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization

    name = factory.Sequence(lambda n: f"Org {n}")
    ingest_rate_per_minute = 60000


def org_with_key(**fields) -> tuple[Organization, str]:
    org = OrganizationFactory(**fields)
    _, raw_key = ApiKey.issue(org)
    return org, raw_key


PROVIDER_CREDENTIALS = {
    "whatsapp_phone_number_id": "100200300",
    "whatsapp_access_token": "wa-token",
    "whatsapp_app_secret": "test-whatsapp-app-secret",
    "whatsapp_verify_token": "verify-me",
    "twilio_account_sid": "AC" + "1" * 32,
    "twilio_auth_token": "test-twilio-auth-token",
    "twilio_from_number": "+15550002222",
}


def org_with_providers(**fields) -> tuple[Organization, str]:
    """An organization set up for WhatsApp and Twilio (secrets match tests.support.FakeProviders)."""
    return org_with_key(**{**PROVIDER_CREDENTIALS, **fields})


def make_rep(org: Organization, username: str, **fields):
    """A rep of `org` with a login (password "pw"), available at any hour unless told otherwise."""
    from django.contrib.auth.models import User

    from routing.models import Rep

    user = User.objects.create_user(username=username, password="pw", email=fields.pop("email", ""), first_name=username.title())
    return Rep.objects.create(user=user, organization=org, **{"working_days": "1,2,3,4,5,6,7", **fields})


def make_team(org: Organization, name: str, reps, *, distribution: str = "round_robin", weights=None):
    from routing.models import Team, TeamMember

    team = Team.objects.create(organization=org, name=name, distribution=distribution)
    for i, rep in enumerate(reps):
        TeamMember.objects.create(team=team, rep=rep, weight=weights[i] if weights else 1)
    return team


def make_lead_history(org: Organization, phone: str, *, at, response_ms=None, channel: str = "whatsapp", source: str = "website",
                      campaign: str = "", delivered: bool = False, read: bool = False, replied: bool = False,
                      qualified: bool = False, rep=None, name: str = "Ana", consent: bool = True):
    """A lead captured at `at` whose story is already in the database (answered, delivered, ...),
    as the conversation engine would have left it; analytics facts are not refreshed."""
    from datetime import timedelta

    from conversations.models import Conversation, Message
    from leads.models import Lead, LeadEvent
    from leads.services import LeadInput, lead_ingest
    from routing.models import Assignment

    result = lead_ingest(org=org, data=LeadInput(source=source, campaign=campaign, phone=phone, name=name, consent=consent),
                         payload={}, received_at=at)
    lead = Lead.objects.get(pk=result.lead_id)
    if rep is not None:
        Assignment.objects.update_or_create(lead=lead, defaults={"rep": rep, "assigned_at": at})
    if response_ms is None:
        return lead
    answered = at + timedelta(milliseconds=response_ms)
    Lead.objects.filter(pk=lead.pk).update(first_response_at=answered, status=Lead.Status.CONTACTED)
    conversation, _ = Conversation.objects.get_or_create(contact=lead.contact, channel=channel, defaults={"organization": org})
    later = answered + timedelta(seconds=2)
    Message.objects.create(
        organization=org, conversation=conversation, lead=lead, direction="outbound", channel=channel, body="Hi",
        status="read" if read else "delivered" if delivered else "accepted", created_at=at, accepted_at=answered,
        delivered_at=later if delivered else None, read_at=later if read else None,
    )
    if replied:
        Message.objects.create(organization=org, conversation=conversation, lead=lead, direction="inbound", channel=channel,
                               body="Hello!", status="received", created_at=later)
    if qualified:
        Lead.objects.filter(pk=lead.pk).update(status=Lead.Status.QUALIFIED)
        LeadEvent.objects.create(lead=lead, kind="lead.status_changed", data={"from": "contacted", "to": "qualified"}, occurred_at=later)
    return lead
