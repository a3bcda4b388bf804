"""CSV import: reading files, the admin's upload → mapping → dry run → import, and what an import stores.

The work is driven here by calling `imports.services.work` (the bulk lane's task body) directly;
tests/test_imports_e2e.py runs it through the real bulk lane while live leads come in.
"""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from conversations.models import Greeting
from imports import csvfile, services
from imports.models import LeadImport, RowError
from leads.models import Lead, LeadEvent, Submission
from swiftex.models import OutboxEvent
from routing import services as routing
from routing.models import Assignment
from tests.factories import make_rep, org_with_providers
from tests.support import api_client, post_json

pytestmark = pytest.mark.django_db

HEADER = ["Nome", "Telefone", "E-mail", "Campanha", "Opt-in", "Empresa"]


def csv_bytes(rows: list[list[str]], header=HEADER, delimiter=",") -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


def list_with_bad_rows(n: int) -> tuple[bytes, set[int]]:
    """n rows; every 50th has a bad phone, every 77th a bad email and no phone, every 91st says 'maybe' to consent.
    Returns the file and the spreadsheet row numbers that must be reported."""
    rows, bad = [], set()
    for i in range(n):
        phone, email, consent = f"+1415555{i:04d}", f"person{i}@example.com", "yes" if i % 2 else "no"
        if i % 50 == 7:
            phone = "12"
        if i % 77 == 5:
            phone, email = "", "not-an-email"
        if i % 91 == 3:
            consent = "maybe"
        if phone == "12" or email == "not-an-email" or consent == "maybe":
            bad.add(i + 2)
        rows.append([f"Person {i}", phone, email, "expo-2026", consent, "ACME"])
    return csv_bytes(rows), bad


def started(count: int, *, consent: str = "") -> LeadImport:
    """An import of `count` valid rows (P0, P1, ...), started; the work is left to the test."""
    org, _ = org_with_providers()
    rows = [[f"P{i}", f"+1415555{i:04d}", "", "", consent, ""] for i in range(count)]
    lead_import = services.upload(organization=org, file_name="list.csv", raw=csv_bytes(rows))
    services.start(lead_import, LeadImport.Status.IMPORTING)
    return lead_import


def run(lead_import: LeadImport) -> LeadImport:
    while services.work(lead_import.pk, budget_seconds=60) is not None:
        pass
    lead_import.refresh_from_db()
    return lead_import


@pytest.fixture(autouse=True)
def _fast(settings):
    settings.IMPORT_ROWS_PER_SECOND = settings.IMPORT_CHECK_ROWS_PER_SECOND = 1_000_000


# --- Reading files ------------------------------------------------------------------------------


def test_columns_are_guessed_from_their_headers_and_unknown_ones_kept_as_metadata():
    assert csvfile.guess_mapping(HEADER) == ["name", "phone", "email", "campaign", "consent", "metadata"]
    assert csvfile.guess_mapping(["First Name", "Last Name", "Mobile", "Email", "Email"]) == [
        "first_name", "last_name", "phone", "email", "metadata",
    ]


@pytest.mark.parametrize("raw, message", [
    ("Nome;Telefone\nAna;+14155550100\n".encode("latin-1").replace(b"Ana", b"\xc1na"), "not UTF-8"),
    (b"", "empty"),
    ("name,phone\nAna,+14155550100\n".encode("utf-16-le"), "NUL bytes"),  # UTF-16 without its byte-order mark
    (b"name,phone\n", "no rows"),
    (b",,\n1,2,3\n", "first row must name the columns"),
    (b'name,phone,notes\nAna,+14155550100,"call after 5\nBia,+14155550101,\nCris,+14155550102,\n',
     r"not valid CSV at line 4: .* \(a quote opened and never closed\?\)"),  # not 1 row silently holding 3
    (b"name,phone\n" + b"x" * 140_000 + b",1\n", "not valid CSV at line 2: field larger than field limit"),
    (b"x" * 140_000 + b",phone\nAna,1\n", "not valid CSV at line 1: field larger than field limit"),
])
def test_an_unreadable_file_is_refused_with_what_to_do(raw, message):
    org, _ = org_with_providers()
    with pytest.raises(services.ImportRefused, match=message):
        services.upload(organization=org, file_name="list.csv", raw=raw)
    assert not LeadImport.objects.exists()


def test_semicolons_a_byte_order_mark_and_first_plus_last_names_are_read():
    org, _ = org_with_providers()
    raw = "\ufeffFirst name;Last name;Phone\nAna;Souza;(415) 555-0100\n".encode("utf-8")
    lead_import = services.upload(organization=org, file_name="excel.csv", raw=raw)
    services.start(lead_import, LeadImport.Status.IMPORTING)
    run(lead_import)

    lead = Lead.objects.select_related("contact").get()
    assert (lead.contact.name, lead.contact.phone, lead.source, lead.imported) == ("Ana Souza", "+14155550100", "import", True)


def test_mac_line_endings_quoted_line_breaks_and_repeated_headers_are_read():
    org, _ = org_with_providers()
    raw = b'Name,Phone,Notes,Notes\rAna,+14155550100,"first line\r\nsecond",a\rBia,+14155550101,,b\r'  # Excel "CSV (Macintosh)"
    lead_import = services.upload(organization=org, file_name="mac.csv", raw=raw)
    assert lead_import.rows_total == 2 and lead_import.headers == ["Name", "Phone", "Notes", "Notes (2)"]
    services.start(lead_import, LeadImport.Status.IMPORTING)
    run(lead_import)
    row = Lead.objects.get(contact__name="Ana").submissions.get().payload["row"]
    assert (row["Notes"], row["Notes (2)"]) == ("first line\r\nsecond", "a")


def test_an_import_uploaded_before_strict_parsing_still_shows_and_runs(admin_client):
    org, _ = org_with_providers()
    lead_import = services.upload(organization=org, file_name="ok.csv", raw=b"name,phone\nAna,+14155550100\nBia,+14155550101\n")
    # What the lenient reader accepted at upload, and the strict one refuses: text after a closing quote.
    LeadImport.objects.filter(pk=lead_import.pk).update(content='name,phone\n"Ana" Lima,+14155550100\nBia,+14155550101\n')
    assert admin_client.get(f"/admin/imports/leadimport/{lead_import.pk}/change/").status_code == 200  # its mapping page
    services.start(lead_import, LeadImport.Status.IMPORTING)
    lead_import = run(lead_import)
    assert (lead_import.status, lead_import.created_leads) == ("done", 2)
    assert Lead.objects.filter(contact__name="Ana Lima").exists()


def test_a_rows_own_no_is_not_overridden_by_everyone_opted_in():
    body, errors = csvfile.lead_body(["Ana", "+14155550100", "no"], ["Name", "Phone", "Opt-in"], ["name", "phone", "consent"],
                                     source="import", campaign="", consent_all=True)
    assert body["consent"] is False and not errors
    body, _ = csvfile.lead_body(["Bia", "+14155550101", ""], ["Name", "Phone", "Opt-in"], ["name", "phone", "consent"],
                                source="import", campaign="", consent_all=True)
    assert body["consent"] is True


def test_a_mapping_without_phone_or_email_cannot_start():
    org, _ = org_with_providers()
    lead_import = services.upload(organization=org, file_name="list.csv", raw=csv_bytes([["Ana", "+14155550100", "", "", "", ""]]))
    with pytest.raises(services.ImportRefused, match="phone or the email"):
        services.start(lead_import, LeadImport.Status.CHECKING, mapping=["name", "ignore", "ignore", "ignore", "ignore", "ignore"])
    with pytest.raises(services.ImportRefused, match="more than one column"):
        services.start(lead_import, LeadImport.Status.CHECKING, mapping=["name", "phone", "phone", "ignore", "ignore", "ignore"])


# --- What an import stores ----------------------------------------------------------------------


def test_imported_leads_are_flagged_announced_in_chunks_and_never_greeted(settings):
    settings.IMPORT_CHUNK_ROWS = 4
    lead_import = run(started(10, consent="yes"))

    assert (lead_import.status, lead_import.created_leads, lead_import.cursor) == ("done", 10, 10)
    assert Lead.objects.filter(imported=True).count() == 10
    events = OutboxEvent.objects.order_by("id")
    assert [e.event_type for e in events] == ["lead.imported"] * 3  # 4 + 4 + 2 rows, no lead.created
    assert sorted(i for e in events for i in e.payload["lead_ids"]) == sorted(Lead.objects.values_list("pk", flat=True))
    assert all(e.payload["greet"] is False for e in events)
    assert LeadEvent.objects.filter(kind="lead.created", data__imported=True).count() == 10
    assert Submission.objects.filter(payload__file="list.csv", payload__row__Nome="P3").count() == 1
    assert not Greeting.objects.exists()


def test_someone_on_a_list_who_fills_in_a_form_becomes_a_hot_lead_and_is_announced_once(org_and_key):
    org, key = org_and_key
    lead_import = services.upload(organization=org, file_name="list.csv", raw=csv_bytes([["Ana", "+14155550100", "", "", "", ""]]))
    services.start(lead_import, LeadImport.Status.IMPORTING)
    run(lead_import)
    imported = Lead.objects.get()

    first = post_json(api_client(key), "/api/v1/leads", {"phone": "+14155550100", "source": "web"})
    again = post_json(api_client(key), "/api/v1/leads", {"phone": "+14155550100", "source": "web"})

    assert first.status_code == 201 and first.json()["id"] == imported.pk  # the same lead, now hot
    assert again.status_code == 200
    imported.refresh_from_db()
    assert imported.imported is False and imported.captured_at > lead_import.created_at
    assert OutboxEvent.objects.filter(event_type="lead.created", payload__lead_id=imported.pk).count() == 1


def test_a_list_lead_given_an_owner_by_hand_keeps_them_when_promoted(org_and_key):
    org, key = org_and_key
    ana, bo = make_rep(org, "ana"), make_rep(org, "bo")
    org.fallback_owner = bo  # the organization routes new leads
    org.save()
    lead_import = services.upload(organization=org, file_name="list.csv", raw=csv_bytes([["Cy", "+14155550100", "", "", "", ""]]))
    services.start(lead_import, LeadImport.Status.IMPORTING)
    run(lead_import)
    listed = Lead.objects.get()
    assert not Assignment.objects.exists()  # a list is not routed
    routing.reassign(listed, ana, by="admin", reason="hers")

    response = post_json(api_client(key), "/api/v1/leads", {"phone": "+14155550100", "source": "web"})

    assert response.status_code == 201 and response.json()["id"] == listed.pk
    assert Assignment.objects.get(lead=listed).rep == ana


def test_a_worker_that_dies_mid_chunk_leaves_no_row_done_twice(settings, monkeypatch):
    settings.IMPORT_CHUNK_ROWS = 5
    lead_import = started(12)
    real_ingest, calls = services.lead_ingest, []

    def dies_on_the_seventh_row(**kwargs):
        calls.append(1)
        if len(calls) == 7:
            raise SystemExit("worker killed")
        return real_ingest(**kwargs)

    monkeypatch.setattr(services, "lead_ingest", dies_on_the_seventh_row)
    with pytest.raises(SystemExit):
        services.work(lead_import.pk, budget_seconds=60)
    lead_import.refresh_from_db()
    assert (lead_import.cursor, Lead.objects.count()) == (5, 5)  # the second chunk rolled back whole

    monkeypatch.setattr(services, "lead_ingest", real_ingest)
    lead_import = run(lead_import)
    assert (lead_import.status, lead_import.created_leads, Lead.objects.count(), Submission.objects.count()) == ("done", 12, 12, 12)


def test_a_stalled_import_is_picked_up_by_one_chain_and_a_late_slice_of_the_old_one_stops(settings):
    # The bulk lane was busy for over IMPORT_STALL_SECONDS: the import's own next slice was only late.
    settings.IMPORT_CHUNK_ROWS = 3
    lead_import = started(9)
    first = LeadImport.objects.get().chain
    assert services.work(lead_import.pk, chain=first, budget_seconds=0.0001) == first  # one chunk, more to do

    assert services.work(lead_import.pk, claim=True, budget_seconds=0.0001) is None  # not stalled: no takeover
    LeadImport.objects.update(heartbeat_at=timezone.now() - timedelta(seconds=settings.IMPORT_STALL_SECONDS + 1))
    assert services.stalled() == [lead_import.pk]
    second = services.work(lead_import.pk, claim=True, budget_seconds=0.0001)
    assert second == first + 1 and services.stalled() == []
    assert services.work(lead_import.pk, claim=True, budget_seconds=0.0001) is None  # a second resume task: nothing

    assert services.work(lead_import.pk, chain=first, budget_seconds=60) is None  # the late slice stops at once
    lead_import.refresh_from_db()
    assert lead_import.cursor == 6 and Lead.objects.count() == 6
    assert services.work(lead_import.pk, chain=second, budget_seconds=60) is None
    lead_import.refresh_from_db()
    assert (lead_import.status, lead_import.created_leads, Lead.objects.count()) == ("done", 9, 9)


def test_re_importing_a_list_with_external_ids_adds_nothing(org_and_key):
    org, _ = org_and_key
    header = ["id", "phone"]
    raw = csv_bytes([["a-1", "+14155550100"], ["a-2", "+14155550101"]], header=header)
    for _ in range(2):
        lead_import = services.upload(organization=org, file_name="crm-export.csv", raw=raw)
        services.start(lead_import, LeadImport.Status.IMPORTING)
        run(lead_import)
    assert (Lead.objects.count(), Submission.objects.count(), lead_import.existing_leads) == (2, 2, 2)


# --- The admin's steps --------------------------------------------------------------------------


def test_an_admin_checks_then_imports_ten_thousand_rows_and_every_bad_row_is_reported(admin_client):
    org, _ = org_with_providers()
    raw, bad_rows = list_with_bad_rows(10_000)

    page = admin_client.post("/admin/imports/leadimport/add/", {
        "organization": org.pk, "file": SimpleUploadedFile("expo.csv", raw, "text/csv"), "source": "expo", "campaign": "",
    }, follow=True)
    lead_import = LeadImport.objects.get()
    assert "10000 rows for" in page.content.decode() and 'value="consent" selected' in page.content.decode()
    url = f"/admin/imports/leadimport/{lead_import.pk}/change/"
    mapping = {f"column-{i}": target for i, target in enumerate(lead_import.mapping)}

    admin_client.post(url, {**mapping, "_check": "1"})
    checked = run(lead_import)
    assert (checked.status, checked.invalid_rows, checked.valid_rows) == ("checked", len(bad_rows), 10_000 - len(bad_rows))
    assert not Lead.objects.exists()  # a dry run writes no lead
    page = admin_client.get(url).content.decode()
    assert f"{len(bad_rows)} rows with errors" in page and "How the first valid rows will be stored" in page
    assert "+14155550000" in page  # the preview shows the stored (E.164) phone

    admin_client.post(url, {**mapping, "_import": "1"})
    done = run(lead_import)
    assert (done.status, done.created_leads, done.invalid_rows) == ("done", 10_000 - len(bad_rows), len(bad_rows))
    assert set(RowError.objects.values_list("line", flat=True)) == bad_rows
    assert Lead.objects.filter(organization=org, source="expo", imported=True).count() == 10_000 - len(bad_rows)
    maybe = RowError.objects.get(line=3 + 2)
    assert maybe.errors == {"consent": ["'maybe' is not yes or no."]} and maybe.values["Nome"] == "Person 3"

    download = b"".join(admin_client.get(f"/admin/imports/leadimport/{lead_import.pk}/errors.csv").streaming_content).decode()
    reported = list(csv.reader(io.StringIO(download)))
    assert reported[0][:3] == ["row", "errors", "Nome"]
    assert {int(row[0]) for row in reported[1:]} == bad_rows
    assert "phone:" in reported[1 + sorted(bad_rows).index(9)][1]  # row 9 = person 7, the phone "12"


def test_a_running_import_shows_its_progress_and_can_be_stopped(admin_client, settings):
    settings.IMPORT_CHUNK_ROWS = 3
    org, _ = org_with_providers()
    lead_import = services.upload(organization=org, file_name="list.csv",
                                  raw=csv_bytes([[f"P{i}", f"+1415555{i:04d}", "", "", "", ""] for i in range(9)]))
    services.start(lead_import, LeadImport.Status.IMPORTING)
    services.work(lead_import.pk, budget_seconds=0.0001)  # one chunk

    page = admin_client.get(f"/admin/imports/leadimport/{lead_import.pk}/change/").content.decode()
    assert 'http-equiv="refresh"' in page and "3 of 9 (33%)" in page
    admin_client.post(f"/admin/imports/leadimport/{lead_import.pk}/change/", {"_stop": "1"})
    lead_import = run(lead_import)
    assert (lead_import.status, Lead.objects.count()) == ("cancelled", 3)


def test_a_file_too_big_is_refused_on_the_upload_page(admin_client, settings):
    settings.IMPORT_MAX_BYTES = 1024
    org, _ = org_with_providers()
    raw = csv_bytes([[f"P{i}", f"+1415555{i:04d}", "", "", "", ""] for i in range(100)])
    page = admin_client.post("/admin/imports/leadimport/add/", {
        "organization": org.pk, "file": SimpleUploadedFile("big.csv", raw, "text/csv"), "source": "import",
    })
    assert page.status_code == 200 and "the limit is 1,024 (IMPORT_MAX_BYTES)" in page.content.decode()
    assert not LeadImport.objects.exists()


def test_the_command_names_a_bad_option_instead_of_a_traceback(tmp_path):
    from django.core.management import CommandError, call_command

    org, _ = org_with_providers()
    file = tmp_path / "list.csv"
    file.write_bytes(b"name,phone\nAna,+14155550100\n")
    with pytest.raises(CommandError, match=r"--source: "):
        call_command("import_leads", str(file), "--organization", str(org.pk), "--source", "Bad Source")
    assert not LeadImport.objects.exists()


def test_a_downloaded_csv_defuses_formulas_in_its_header_too():
    from swiftex.csvexport import streamed_csv

    response = streamed_csv("bad-rows.csv", ["=HYPERLINK(1)", "phone"], [["@SUM(1)", "+1415"]])
    assert b"".join(response.streaming_content).decode().splitlines() == ["'=HYPERLINK(1),phone", "'@SUM(1),'+1415"]
