# The admin's leads list filters by source and campaign (leads/admin_filters.py).

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # CONCURRENTLY: leads keep coming in while a large table is indexed (a plain CREATE INDEX
    # would block every insert until it finished); that cannot run inside a transaction.
    atomic = False

    dependencies = [
        ("leads", "0006_fallback_owner"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="lead",
            index=models.Index(fields=["organization", "source"], name="lead_org_source_idx"),
        ),
        AddIndexConcurrently(
            model_name="lead",
            index=models.Index(fields=["organization", "campaign"], name="lead_org_campaign_idx"),
        ),
    ]
