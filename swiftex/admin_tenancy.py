"""Tenancy in the admin: who sees which organization's rows.

- A superuser sees every organization.
- An organization's admin is a staff user whose Rep is a manager: every list,
  change page, action, autocomplete, list filter and foreign-key dropdown shows
  only their organization's rows, and what they create lands in it.
- Any other staff user sees no tenant data at all (fail closed).

Each admin names the path from its model to the Organization (`tenant_path`,
e.g. "organization", "lead__organization", "pk" for Organization itself);
`TenantAdminMixin` does the rest in one place. An object outside the scope is
a 404, never Django's "doesn't exist, perhaps it was deleted?" redirect, and
no page tells it apart from an id that does not exist.

`make_org_admin` (swiftex/management/commands) turns a user into an
organization's admin with the permissions below; docs/admin.md explains it.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib import admin
from django.db.models import Model, QuerySet
from django.http import Http404

from leads.models import Organization
from routing.models import Rep

# Models reached through another model, with no admin of their own to say so.
_PATHS = {
    "routing.teammember": "team__organization",
    "conversations.followupstep": "sequence__organization",
    "leads.leadevent": "lead__organization",
}


@dataclass(frozen=True)
class Scope:
    everything: bool  # a superuser
    organization_id: int | None  # the organization an org admin runs; None (and not everything): nothing

    def filter(self, queryset: QuerySet, path: str | None) -> QuerySet:
        if self.everything:
            return queryset
        if self.organization_id is None or path is None:
            return queryset.none()  # no tenant, or a model we cannot place in one
        return queryset.filter(**{path: self.organization_id})

    def allows(self, obj: Model | None, path: str | None) -> bool:
        if self.everything:
            return True
        if self.organization_id is None or path is None:
            return False
        return obj is None or obj.pk is None or organization_of(obj, path) == self.organization_id


NOTHING = Scope(everything=False, organization_id=None)


def scope_of(request) -> Scope:
    """The request user's scope, looked up once per request."""
    cached = getattr(request, "_swiftex_admin_scope", None)
    if cached is not None:
        return cached
    user = request.user
    if not (user.is_authenticated and user.is_active and user.is_staff):
        scope = NOTHING
    elif user.is_superuser:
        scope = Scope(everything=True, organization_id=None)
    else:
        org_id = Rep.objects.filter(user_id=user.pk, role=Rep.Role.MANAGER).values_list("organization_id", flat=True).first()
        scope = Scope(everything=False, organization_id=org_id)
    request._swiftex_admin_scope = scope
    return scope


def tenant_path(model: type[Model], site: admin.AdminSite = admin.site) -> str | None:
    """How `model` reaches its Organization, or None if it belongs to none (users, groups)."""
    if model is Organization:
        return "pk"
    model_admin = site._registry.get(model)
    if isinstance(model_admin, TenantAdminMixin):
        return model_admin.tenant_path
    if label := _PATHS.get(model._meta.label_lower):
        return label
    if any(field.name == "organization" and field.is_relation for field in model._meta.get_fields()):
        return "organization"
    return None


def organization_of(obj: Model, path: str) -> int | None:
    """The organization id of `obj` along `path` (one query per hop beyond the first)."""
    if path == "pk":
        return obj.pk
    *hops, last = path.split("__")
    for hop in hops:
        obj = getattr(obj, hop)
        if obj is None:
            return None
    return getattr(obj, obj._meta.get_field(last).attname)


class ScopedRelatedFieldListFilter(admin.RelatedFieldListFilter):
    """A related-field filter offering only the request's organization's rows (the stock one lists every tenant's)."""

    def field_choices(self, field, request, model_admin):
        # select_related(): the choices' labels (a rep's name is on its user) cost no query each.
        model = field.remote_field.model
        queryset = scope_of(request).filter(model._default_manager.select_related(), tenant_path(model, model_admin.admin_site))
        if ordering := self.field_admin_ordering(field, request, model_admin):
            queryset = queryset.order_by(*ordering)
        return [(getattr(obj, field.target_field.attname), str(obj)) for obj in queryset]


def _filter_path(list_filter) -> str | None:
    if isinstance(list_filter, str):
        return list_filter
    if isinstance(list_filter, (tuple, list)):
        return list_filter[0]
    return None  # a SimpleListFilter class scopes its own lookups


class TenantScopedMixin:
    """Querysets and foreign-key choices limited to the request's organization (admins and inlines)."""

    tenant_path: str = "organization"

    def get_queryset(self, request):
        return scope_of(request).filter(super().get_queryset(request), self.tenant_path)

    def get_field_queryset(self, db, db_field, request):
        # Every ForeignKey/ManyToMany dropdown, raw-id and autocomplete field validates against this.
        queryset = super().get_field_queryset(db, db_field, request)
        scope = scope_of(request)
        if scope.everything:
            return queryset
        model = db_field.remote_field.model
        if queryset is None:
            queryset = model._default_manager.using(db).all()
        return scope.filter(queryset, tenant_path(model, self.admin_site))

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.remote_field.model is Organization and not scope_of(request).everything:
            kwargs.setdefault("empty_label", None)  # their one organization, preselected
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class TenantAdminMixin(TenantScopedMixin):
    """Put first in a ModelAdmin's bases: `class LeadAdmin(TenantAdminMixin, admin.ModelAdmin)`."""

    def get_object(self, request, object_id, from_field=None):
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            # Django would redirect with "doesn't exist. Perhaps it was deleted?"; another
            # organization's id must look exactly like an id that does not exist.
            raise Http404(f"No {self.opts.verbose_name} with id {object_id!r}.")
        return obj

    # --- permissions: the model permission and the scope, both ---------------------------------

    def has_module_permission(self, request):
        return scope_of(request) != NOTHING and super().has_module_permission(request)

    def has_view_permission(self, request, obj=None):
        return scope_of(request).allows(obj, self.tenant_path) and super().has_view_permission(request, obj)

    def has_add_permission(self, request):
        return scope_of(request) != NOTHING and super().has_add_permission(request)

    def has_change_permission(self, request, obj=None):
        return scope_of(request).allows(obj, self.tenant_path) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return scope_of(request).allows(obj, self.tenant_path) and super().has_delete_permission(request, obj)

    # --- pages --------------------------------------------------------------------------------

    def get_list_filter(self, request):
        filters = super().get_list_filter(request)
        scoped = not scope_of(request).everything
        result = []
        for list_filter in filters:
            path = _filter_path(list_filter)
            if scoped and path == self.tenant_path:
                continue  # one organization: nothing to filter, and the stock filter would list them all
            if isinstance(list_filter, str) and self._is_relation(path):
                list_filter = (list_filter, ScopedRelatedFieldListFilter)
            result.append(list_filter)
        return result

    def _is_relation(self, path: str) -> bool:
        from django.contrib.admin.utils import get_fields_from_path

        try:
            return get_fields_from_path(self.model, path)[-1].is_relation
        except Exception:  # noqa: BLE001 - not a field path (Django reports it elsewhere)
            return False

    def get_readonly_fields(self, request, obj=None):
        fields = tuple(super().get_readonly_fields(request, obj))
        # Moving a row to another organization would strand what hangs off it (a contact's
        # leads, a team's rules) in the old one: the organization is chosen once.
        if obj is not None and self.tenant_path == "organization" and "organization" not in fields:
            fields += ("organization",)
        return fields

    def save_model(self, request, obj, form, change):
        scope = scope_of(request)
        if not scope.everything and self.tenant_path == "organization":
            obj.organization_id = scope.organization_id  # the form offered only theirs; this makes it certain
        super().save_model(request, obj, form, change)


class TenantInlineMixin(TenantScopedMixin):
    """For inlines: their rows follow the parent (already scoped); their own dropdowns are scoped here."""


# --- the permissions an organization's admin gets ---------------------------------------------

ORG_ADMIN_GROUP = "Organization admins"

# app -> model -> actions. Webhook deliveries are left out: one delivery's body can carry
# several organizations' statuses. Users and groups are left out: reps get their login
# from the rep page, and only a superuser makes someone an admin.
ORG_ADMIN_PERMISSIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "leads": {
        "organization": ("view", "change"),
        "apikey": ("view", "add", "change"),
        "contact": ("view", "change"),
        "lead": ("view", "change"),
        "submission": ("view",),
        "leadevent": ("view",),
    },
    "conversations": {
        "greeting": ("view",),
        "reply": ("view",),
        "message": ("view",),
        "conversation": ("view",),
        "followupsequence": ("view", "add", "change", "delete"),
        "followupstep": ("view", "add", "change", "delete"),
        "scheduledjob": ("view", "change"),
    },
    "crmsync": {
        "contactsync": ("view", "change"),
        "crmpush": ("view",),
    },
    "imports": {
        "leadimport": ("view", "add", "change"),
    },
    "metaleads": {
        "metapage": ("view", "add", "change"),
        "metaleadform": ("view", "add", "change"),
        "metaleadgen": ("view", "change"),  # change: the retry action
    },
    "webforms": {
        "webform": ("view", "add", "change", "delete"),
    },
    "routing": {
        "rep": ("view", "add", "change", "delete"),
        "team": ("view", "add", "change", "delete"),
        "teammember": ("view", "add", "change", "delete"),
        "routingrule": ("view", "add", "change", "delete"),
        "assignment": ("view",),
        "notification": ("view", "change"),
    },
}


def org_admin_group():
    """The group with exactly ORG_ADMIN_PERMISSIONS, created or brought up to date."""
    from django.contrib.auth.models import Group, Permission
    from django.db.models import Q

    wanted = Q(pk__in=[])
    for app_label, models in ORG_ADMIN_PERMISSIONS.items():
        for model, actions in models.items():
            wanted |= Q(content_type__app_label=app_label, codename__in=[f"{action}_{model}" for action in actions])
    permissions = list(Permission.objects.filter(wanted))
    expected = sum(len(actions) for models in ORG_ADMIN_PERMISSIONS.values() for actions in models.values())
    if len(permissions) != expected:
        raise RuntimeError(f"found {len(permissions)} of the {expected} permissions for {ORG_ADMIN_GROUP!r}: run migrate first")
    group, _ = Group.objects.get_or_create(name=ORG_ADMIN_GROUP)
    group.permissions.set(permissions)
    return group
