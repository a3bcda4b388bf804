"""Reading an uploaded list: decoding, dialect, header, column guesses, and a row as a lead body.

Pure functions: no database. What cannot be read gets a `CsvError` whose
message says what to do about it.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from collections.abc import Iterator

from imports.models import TARGETS

YES = {"yes", "y", "true", "1", "x", "sim", "s", "si", "sí", "oui", "ja", "opt-in", "opted in"}
NO = {"no", "n", "false", "0", "não", "nao", "non", "nein", ""}

# Header words (lower-cased, non-letters dropped) each target answers to.
_GUESSES = {
    "name": {"name", "fullname", "nome", "nombre", "contact", "contactname", "lead", "leadname", "customer"},
    "first_name": {"firstname", "first", "givenname", "primeironome"},
    "last_name": {"lastname", "last", "surname", "familyname", "sobrenome", "apellido"},
    "phone": {"phone", "phonenumber", "mobile", "mobilephone", "cell", "cellphone", "whatsapp", "telefone", "telefono",
              "celular", "tel", "telephone", "msisdn"},
    "email": {"email", "emailaddress", "mail", "correo"},
    "message": {"message", "comments", "comment", "notes", "note", "mensagem", "mensaje", "question"},
    "campaign": {"campaign", "campaignname", "utmcampaign", "campanha", "campana"},
    "external_id": {"externalid", "id", "leadid", "crmid", "recordid", "reference", "ref"},
    "consent": {"consent", "optin", "whatsappoptin", "smsoptin", "marketingconsent", "consentimento"},
}


class CsvError(ValueError):
    pass


def decode(raw: bytes) -> str:
    """UTF-8 (with or without Excel's byte-order mark); anything else is refused by name."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CsvError(
            f"The file is not UTF-8 text (byte {exc.start + 1} cannot be read). In Excel use “Save as → CSV UTF-8”; "
            "in Google Sheets “Download → CSV”."
        ) from None
    if "\x00" in text:  # decodes as UTF-8, but no text file has them; the database would refuse it
        raise CsvError(
            f"The file has NUL bytes (the first at character {text.index(chr(0)) + 1}): it is probably UTF-16 "
            "(Excel's “Unicode Text”). In Excel use “Save as → CSV UTF-8”."
        )
    return text


def sniff_delimiter(text: str) -> str:
    """Comma, semicolon (European Excel) or tab, read off the header line."""
    header = re.split(r"\r\n|\r|\n", text, maxsplit=1)[0]
    counts = {delimiter: header.count(delimiter) for delimiter in (",", ";", "\t")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _reader(text: str, delimiter: str, *, strict: bool = True):
    # newline="": rows end at \n, \r\n or a lone \r (Excel's "CSV (Macintosh)"), and a line
    # break inside quotes stays in its cell. strict: a quote left open to the end of the file
    # is an error, not one cell silently holding every row after it.
    return csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=strict)


def _invalid(exc: csv.Error, reader) -> CsvError:
    hint = " (a quote opened and never closed?)" if "end of data" in str(exc) or "expected after" in str(exc) else ""
    return CsvError(f"The file is not valid CSV at line {reader.line_num}: {exc}{hint}.")


def read_header(text: str, delimiter: str) -> list[str]:
    if not text.strip():
        raise CsvError("The file is empty.")
    reader = _reader(text, delimiter)
    try:
        header = next(reader, [])
    except csv.Error as exc:
        raise _invalid(exc, reader) from None
    names = [name.strip() for name in header]
    if not any(names):
        raise CsvError("The first row must name the columns (e.g. name, phone, email).")
    names = [name or f"column {index + 1}" for index, name in enumerate(names)]
    # Two columns of one name would share one metadata key, and the first one's values be lost.
    return [name if names[:index].count(name) == 0 else f"{name} ({names[:index].count(name) + 1})"
            for index, name in enumerate(names)]


def rows(text: str, delimiter: str, *, start: int = 0, strict: bool = True) -> Iterator[tuple[int, list[str]]]:
    """(spreadsheet row number, cells) for each data row from the `start`-th on; blank rows skipped but counted.
    `strict` False: as files were read before strict parsing (one uploaded then, imported now)."""
    reader = _reader(text, delimiter, strict=strict)
    next(reader, None)  # the header
    for index, cells in enumerate(reader):
        if index >= start:
            yield index + 2, cells


def stored_rows(text: str, delimiter: str, limit: int | None = None) -> list[tuple[int, list[str]]]:
    """The rows of a file already accepted at upload (up to `limit`). One uploaded before
    strict parsing, which it would fail, is read as it was checked then."""
    try:
        return list(itertools.islice(rows(text, delimiter), limit))
    except csv.Error:
        return list(itertools.islice(rows(text, delimiter, strict=False), limit))


def count_rows(text: str, delimiter: str) -> int:
    reader = _reader(text, delimiter)
    try:
        next(reader, None)
        return sum(1 for _ in reader)
    except csv.Error as exc:
        raise _invalid(exc, reader) from None


def guess_mapping(headers: list[str]) -> list[str]:
    """A target per column from its header; unknown columns are kept as metadata. Each target once."""
    taken: set[str] = set()
    mapping = []
    for header in headers:
        word = re.sub(r"[^a-z]", "", header.lower())
        target = next((t for t, words in _GUESSES.items() if word in words and t not in taken), "metadata")
        if target != "metadata":
            taken.add(target)
        mapping.append(target)
    return mapping


def mapping_problems(mapping: list[str]) -> list[str]:
    problems = [f"Unknown target {target!r}." for target in mapping if target not in TARGETS]
    repeated = sorted({t for t in mapping if mapping.count(t) > 1 and t not in ("metadata", "ignore")})
    problems += [f"{TARGETS[t]} is chosen for more than one column." for t in repeated]
    if "phone" not in mapping and "email" not in mapping:
        problems.append("Choose the column with the phone or the email: a lead needs one of them.")
    return problems


def lead_body(cells: list[str], headers: list[str], mapping: list[str], *, source: str, campaign: str,
              consent_all: bool) -> tuple[dict, dict]:
    """(body for LeadSerializer, errors found before it) for one row."""
    values = {target: "" for target in TARGETS}
    metadata = {}
    for header, target, cell in zip(headers, mapping, cells):
        cell = cell.strip()
        if target == "metadata":
            if cell:
                metadata[header] = cell
        elif target != "ignore":
            values[target] = cell
    errors = {}
    if len(cells) > len(headers) and any(cell.strip() for cell in cells[len(headers):]):
        errors["row"] = [f"{len(cells)} cells but the header names {len(headers)} columns."]
    consent = consent_all  # "everyone on this list opted in" answers for the rows that say nothing
    if values["consent"]:
        answer = values["consent"].lower()
        if answer not in YES | NO:
            errors["consent"] = [f"{values['consent']!r} is not yes or no."]
        consent = answer in YES  # a row's own "no" is never overridden
    name = values["name"] or " ".join(part for part in (values["first_name"], values["last_name"]) if part)
    body = {
        "name": name, "phone": values["phone"] or None, "email": values["email"] or None, "message": values["message"],
        "campaign": values["campaign"] or campaign, "external_id": values["external_id"] or None,
        "source": source, "consent": consent, "metadata": metadata,
    }
    return body, errors
