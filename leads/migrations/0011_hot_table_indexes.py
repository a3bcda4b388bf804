# A foreign key that leads a composite index needs no index of its own: one entry fewer
# per lead row (lead_org_* indexes) and per timeline row (lead_event_timeline_idx), about
# nine timeline rows a lead. See conversations/0006 and bench/README.md ("Fifth look").

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("leads", "0010_lead_imported"),
    ]

    operations = [
        migrations.AlterField(
            model_name="lead",
            name="organization",
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name="leads", to="leads.organization"),
        ),
        migrations.AlterField(
            model_name="leadevent",
            name="lead",
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name="events", to="leads.lead"),
        ),
    ]
