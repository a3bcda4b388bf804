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
