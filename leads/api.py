"""The lead capture API: create one, create a batch, read one."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from leads.idempotency import IdempotencyKeyReused, idempotent
from leads.selectors import lead_detail
from leads.serializers import LeadSerializer
from leads.services import IngestResult, lead_ingest, route_batch
from leads.throttle import take_ingest_tokens
from swiftex import metrics
from swiftex.api import PayloadTooLarge, error_response, guard_json_body, json_object

IDEMPOTENCY_HEADER = "HTTP_IDEMPOTENCY_KEY"


def _result_body(result: IngestResult) -> dict:
    return {
        "id": result.lead_id,
        "contact_id": result.contact_id,
        "submission_id": result.submission_id,
        "status": result.status,
        "captured_at": result.captured_at.isoformat(),
        "deduplicated": result.deduplicated,
        "duplicate_submission": result.duplicate_submission,
    }


def _result_status(result: IngestResult) -> int:
    return status.HTTP_201_CREATED if result.created else status.HTTP_200_OK


def _rate_limited(org, cost: int) -> Response | None:
    decision = take_ingest_tokens(org, cost)
    if decision.allowed:
        return None
    metrics.INGEST_REJECTED.labels(reason="rate_limited").inc()
    return error_response(
        status.HTTP_429_TOO_MANY_REQUESTS,
        f"Rate limit of {org.ingest_rate_per_minute} leads per minute exceeded; retry after {decision.retry_after_header}s.",
        headers={"Retry-After": decision.retry_after_header},
    )


def _serializer_context(request) -> dict:
    return {"phone_region": request.auth.phone_region, "pinned_source": request.user.pinned_source}


def _idempotency_key(request) -> str | None:
    key = request.META.get(IDEMPOTENCY_HEADER, "").strip()
    return key or None


def _run_idempotent(request, org, body, work) -> Response:
    """Run `work()` -> (status, body) once per Idempotency-Key; replay it on retry."""
    key = _idempotency_key(request)
    if key and len(key) > 255:
        return error_response(400, "Idempotency-Key is longer than 255 characters.", {"Idempotency-Key": ["At most 255 characters."]})
    try:
        with idempotent(org, key, body, source=request.user.pinned_source) as slot:
            if slot.is_replay:
                return Response(slot.replay_body, status=slot.replay_status, headers={"Idempotent-Replayed": "true"})
            status_code, response_body = work()
            slot.save(status_code, response_body)
    except IdempotencyKeyReused:
        return error_response(
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            "This Idempotency-Key was already used with a different request body; use a new key for a new request.",
            {"Idempotency-Key": ["Reused with a different body."]},
        )
    return Response(response_body, status=status_code)


class LeadCreateApi(APIView):
    def post(self, request):
        received_at = timezone.now()
        org = request.auth
        guard_json_body(request, max_bytes=settings.LEADS_MAX_BODY_BYTES)
        if limited := _rate_limited(org, 1):
            return limited
        body = json_object(request)
        serializer = LeadSerializer(data=body, context=_serializer_context(request))
        serializer.is_valid(raise_exception=True)

        def work():
            result = lead_ingest(org=org, data=serializer.to_lead_input(), payload=body, received_at=received_at)
            metrics.LEADS_INGESTED.labels(outcome="created" if result.created else "deduplicated").inc()
            return _result_status(result), _result_body(result)

        response = _run_idempotent(request, org, body, work)
        if response.status_code == status.HTTP_201_CREATED:
            response["Location"] = f"/api/v1/leads/{response.data['id']}"
        return response


class LeadBatchApi(APIView):
    def post(self, request):
        received_at = timezone.now()
        org = request.auth
        guard_json_body(request, max_bytes=settings.LEADS_BATCH_MAX_BODY_BYTES)
        body = json_object(request)
        items = body.get("leads")
        if not isinstance(items, list) or not items:
            return error_response(400, "Send {\"leads\": [ ... ]} with at least one lead.", {"leads": ["Must be a non-empty array."]})
        if len(items) > settings.LEADS_BATCH_MAX_ITEMS:
            raise PayloadTooLarge(f"{len(items)} leads in one batch; the limit is {settings.LEADS_BATCH_MAX_ITEMS}.")
        if limited := _rate_limited(org, len(items)):
            return limited

        def work():
            # A batch is stored all or nothing: one transaction, each lead in a savepoint. Its leads
            # are stored in phone/e-mail order, so two batches naming the same new people take
            # their rows' locks in one order and cannot deadlock; its new leads are routed at the
            # end, team by team (leads.services.route_batch). Results keep the request's order.
            context, route_later = _serializer_context(request), []
            results = [{"index": index, **self._check(item, context)} for index, item in enumerate(items)]
            with transaction.atomic():
                # Stable: two items for one person keep the request's order (the first opens the lead).
                for result in sorted((r for r in results if "data" in r), key=lambda r: r["data"].phone or r["data"].email or ""):
                    stored = lead_ingest(org=org, data=result.pop("data"), payload=items[result["index"]], received_at=received_at,
                                         route_later=route_later)
                    metrics.LEADS_INGESTED.labels(outcome="created" if stored.created else "deduplicated").inc()
                    result.update(http_status=_result_status(stored), lead=_result_body(stored))
                route_batch(org, route_later)
            codes = [r["http_status"] for r in results]
            summary = {"created": codes.count(201), "deduplicated": codes.count(200), "invalid": codes.count(400)}
            return status.HTTP_200_OK, {"results": results, "summary": summary}

        return _run_idempotent(request, org, body, work)

    @staticmethod
    def _check(item, context: dict) -> dict:
        """{"data": the lead to store} or an item's 400."""
        if not isinstance(item, dict):
            return {"http_status": 400, "errors": {"body": ["Each lead must be a JSON object."]}}
        serializer = LeadSerializer(data=item, context=context)
        if not serializer.is_valid():
            metrics.INGEST_REJECTED.labels(reason="invalid").inc()
            return {"http_status": 400, "errors": serializer.errors}
        return {"data": serializer.to_lead_input()}


class LeadDetailApi(APIView):
    def get(self, request, lead_id: int):
        detail = lead_detail(org=request.auth, lead_id=lead_id, source=request.user.pinned_source or None)
        if detail is None:
            return error_response(status.HTTP_404_NOT_FOUND, f"No lead {lead_id} in your organization.")
        return Response(detail)
