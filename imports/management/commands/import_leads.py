"""`manage.py import_leads FILE --organization NAME|ID [--source S] [--campaign C] [--consent-all] [--greet] [--check]`

The admin's CSV import from a shell: reads the file, guesses the columns from
the headers (as the admin page does), and queues the import (or, with
--check, the dry run) on the bulk lane. Progress and row errors are on the
import's admin page; the command prints its id and URL path.
"""

from __future__ import annotations

from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from imports import services
from imports.models import LeadImport
from leads.models import Organization


class Command(BaseCommand):
    help = "Queue a CSV import of leads on the bulk lane (columns guessed from the headers)."

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path)
        parser.add_argument("--organization", required=True, help="The organization's name or id.")
        parser.add_argument("--source", default="import")
        parser.add_argument("--campaign", default="")
        parser.add_argument("--consent-all", action="store_true", help="Everyone on the list opted in to WhatsApp/SMS.")
        parser.add_argument("--greet", action="store_true", help="Greet the new leads (at the bulk lane's pace).")
        parser.add_argument("--check", action="store_true", help="Only the dry run: report bad rows, store no lead.")

    def handle(self, *args, file: Path, organization: str, **options):
        org = Organization.objects.filter(pk=int(organization)).first() if organization.isdigit() else \
            Organization.objects.filter(name=organization).first()
        if org is None:
            raise CommandError(f"No organization {organization!r}.")
        try:
            lead_import = services.upload(
                organization=org, file_name=file.name, raw=file.read_bytes(), source=options["source"],
                campaign=options["campaign"], consent_all=options["consent_all"], greet=options["greet"],
            )
            services.start(lead_import, LeadImport.Status.CHECKING if options["check"] else LeadImport.Status.IMPORTING)
        except OSError as exc:
            raise CommandError(f"Cannot read {file}: {exc.strerror}.") from None
        except services.ImportRefused as exc:
            raise CommandError(str(exc)) from None
        except ValidationError as exc:  # e.g. --source "Bad Source"
            raise CommandError("; ".join(f"--{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items())) from None
        columns = ", ".join(f"{h} → {t}" for h, t in zip(lead_import.headers, lead_import.mapping))
        self.stdout.write(f"{lead_import.rows_total} rows queued ({columns}).")
        self.stdout.write(f"Progress: /admin/imports/leadimport/{lead_import.pk}/change/")
        self.stdout.write(str(lead_import.pk))
