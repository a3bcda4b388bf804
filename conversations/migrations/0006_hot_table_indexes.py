# Fewer index entries per message write (bench/README.md, "Fifth look"): a message row is
# written six times in its life and each write adds an entry to every index of the table.
# Foreign keys that lead a composite index lose their own index; the keys that are almost
# always empty (answered_by, sent_by) are indexed only where set.

import django.db.models.deletion
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # CONCURRENTLY: messages keep being written while a large table is indexed. The partial
    # indexes are built before the full ones are dropped, so lookups always have one.
    atomic = False

    dependencies = [
        ("conversations", "0005_rep_messages"),
        ("leads", "0011_hot_table_indexes"),
        ("routing", "0001_initial"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="message",
            index=models.Index(condition=models.Q(("answered_by__isnull", False)), fields=["answered_by"], name="message_answered_by_idx"),
        ),
        AddIndexConcurrently(
            model_name="message",
            index=models.Index(condition=models.Q(("sent_by__isnull", False)), fields=["sent_by"], name="message_sent_by_idx"),
        ),
        migrations.AlterField(
            model_name="message",
            name="answered_by",
            field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="answered_messages", to="conversations.reply"),
        ),
        migrations.AlterField(
            model_name="message",
            name="sent_by",
            field=models.ForeignKey(blank=True, db_index=False, help_text="The rep who wrote it, if a person did.", null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to="routing.rep"),
        ),
        # Served by message_conversation_idx, message_lead_idx and one_greeting_message_per_channel.
        migrations.AlterField(
            model_name="message",
            name="conversation",
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name="messages", to="conversations.conversation"),
        ),
        migrations.AlterField(
            model_name="message",
            name="greeting",
            field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.CASCADE, related_name="messages", to="conversations.greeting"),
        ),
        migrations.AlterField(
            model_name="message",
            name="lead",
            field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="messages", to="leads.lead"),
        ),
        # Served by job_lead_status_idx.
        migrations.AlterField(
            model_name="scheduledjob",
            name="lead",
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name="scheduled_jobs", to="leads.lead"),
        ),
    ]
