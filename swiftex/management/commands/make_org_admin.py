"""`manage.py make_org_admin USERNAME [--organization ID]`: make a user their organization's admin.

An organization's admin is a staff user whose Rep is a manager, in the
"Organization admins" group (its permissions: swiftex/admin_tenancy.py). This
command sets all three, creating the Rep if the user has none, and brings the
group's permissions up to date. `--revoke` takes admin access away again (the
login and the Rep stay).
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from leads.models import Organization
from routing.models import Rep
from swiftex.admin_tenancy import ORG_ADMIN_GROUP, org_admin_group


class Command(BaseCommand):
    help = "Make a user the admin of their organization (staff, manager Rep, the Organization admins group)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--organization", type=int, help="The organization's id; needed when the user is not a rep yet.")
        parser.add_argument("--revoke", action="store_true", help="Take admin access away (not staff, out of the group).")

    @transaction.atomic
    def handle(self, *args, username: str, organization: int | None, revoke: bool, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user {username!r}. Create the rep in admin (Routing › Reps) or with createsuperuser first.")
        if user.is_superuser:
            raise CommandError(f"{username!r} is a superuser and already sees every organization.")
        group = org_admin_group()
        if revoke:
            user.is_staff = False
            user.save(update_fields=["is_staff"])
            user.groups.remove(group)
            self.stdout.write(f"{username} is no longer an organization admin (their login and rep are kept).")
            return
        rep = Rep.objects.filter(user=user).select_related("organization").first()
        if rep is None:
            org = Organization.objects.filter(pk=organization).first() if organization else None
            if org is None:
                raise CommandError(f"{username!r} is not a rep yet: give the organization with --organization ID (an existing id).")
            rep = Rep.objects.create(user=user, organization=org, role=Rep.Role.MANAGER)
        elif organization and rep.organization_id != organization:
            raise CommandError(f"{username!r} is a rep of {rep.organization} (id {rep.organization_id}), not of organization {organization}.")
        else:
            rep.role = Rep.Role.MANAGER
            rep.save(update_fields=["role"])
        user.is_staff = True
        user.save(update_fields=["is_staff"])
        user.groups.add(group)
        self.stdout.write(f"{username} is now an admin of {rep.organization} (id {rep.organization_id}): "
                          f"staff, manager, in the {ORG_ADMIN_GROUP!r} group.")
