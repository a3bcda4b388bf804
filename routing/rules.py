"""Matching a new lead against the organization's routing rules: pure functions, no queries.

Rules are read once per ORGANIZATION_CACHE_SECONDS (selectors.rules) and
matched in memory, so routing adds no query to a lead that no rule wants and
nothing at all to an organization without rules.
"""

from __future__ import annotations

from dataclasses import dataclass

import phonenumbers

from routing.models import RoutingRule


def _words(value: str) -> frozenset[str]:
    return frozenset(part.strip().lower() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class Rule:
    id: int
    name: str
    team_id: int
    sources: frozenset[str]
    campaigns: frozenset[str]
    countries: frozenset[str]  # lower-case ISO codes
    phone_prefixes: tuple[str, ...]  # "+44", "+1415"
    metadata_key: str
    metadata_values: frozenset[str]

    @classmethod
    def from_model(cls, rule: RoutingRule) -> Rule:
        return cls(
            id=rule.pk, name=rule.name, team_id=rule.team_id,
            sources=_words(rule.sources), campaigns=_words(rule.campaigns), countries=_words(rule.countries),
            phone_prefixes=tuple("+" + prefix.lstrip("+") for prefix in _words(rule.phone_prefixes)),
            metadata_key=rule.metadata_key.strip(), metadata_values=_words(rule.metadata_values),
        )

    def matches(self, *, source: str, campaign: str, phone: str | None, metadata: dict) -> bool:
        if self.sources and source.lower() not in self.sources:
            return False
        if self.campaigns and campaign.lower() not in self.campaigns:
            return False
        if self.phone_prefixes and not (phone and phone.startswith(self.phone_prefixes)):
            return False
        if self.countries and _country(phone) not in self.countries:
            return False
        if self.metadata_key:
            if self.metadata_key not in metadata:
                return False
            if self.metadata_values and str(metadata[self.metadata_key]).strip().lower() not in self.metadata_values:
                return False
        return True


def first_match(rules: list[Rule], *, source: str, campaign: str, phone: str | None, metadata: dict) -> Rule | None:
    return next((rule for rule in rules if rule.matches(source=source, campaign=campaign, phone=phone, metadata=metadata)), None)


def _country(phone: str | None) -> str:
    if not phone:
        return ""
    try:
        number = phonenumbers.parse(phone)
    except phonenumbers.NumberParseException:
        return ""
    # A number outside every known range still has a country calling code: its main country.
    region = phonenumbers.region_code_for_number(number) or phonenumbers.region_code_for_country_code(number.country_code)
    return "" if region == phonenumbers.UNKNOWN_REGION else region.lower()
