"""CRM adapters, chosen per organization (`Organization.crm_adapter`)."""

from __future__ import annotations

from crmsync.adapters.base import Adapter
from crmsync.adapters.hubspot import HubSpot
from crmsync.adapters.webhook import SignedWebhook

ADAPTERS = {HubSpot.kind: HubSpot, SignedWebhook.kind: SignedWebhook}


def for_org(org) -> Adapter | None:
    """The organization's adapter, or None when sync is off."""
    adapter = ADAPTERS.get(org.crm_adapter)
    return adapter(org) if adapter else None
