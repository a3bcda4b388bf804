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
