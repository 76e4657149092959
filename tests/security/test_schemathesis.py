"""Schemathesis against the running gateway's own OpenAPI document, as an operator.

Every operation of the document except the two event streams (they never end; see
``test_auth_matrix.py`` for them) gets generated requests, valid and invalid, and every
built-in check: no 5xx, only documented statuses, content types and headers, schema-valid
requests accepted, schema-invalid ones refused, 401 without the token, 405 with the right
``Allow`` for undeclared methods. The number of examples is bounded so the test runs in
well under a minute (``AGATA_SCHEMATHESIS_EXAMPLES`` raises it).

Known gaps; each is tolerated only for its exact reason, so anything else fails:

- :data:`SEMANTIC_REFUSALS`: a schema-valid body refused with 400 for what no JSON
  schema can say: a file listed twice in a bundle listing (``uniqueItems`` compares whole
  items, not names), selection criteria that do not parse, starting a task whose bundle
  is not uploaded yet, a listed file name the bundle name rule refuses (Unicode
  categories and lookalikes). (Empty or over-long hosts and metric names and NUL characters were
  also tolerated here until the protocol models refused them: their schemas now say so.)
- lax coercions: a schema-invalid body accepted because pydantic's lax mode converted it
  into a valid one (``0`` for ``false``, ``false`` for ``0.0``, ``"0000"`` for ``0``; and
  on purpose, for the original's clients: arguments as one shell-like string, the
  ``client_id`` alias). Tolerated only when the request the services got differs from
  the one sent; a schema-invalid body accepted *as sent* fails.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import httpx
import schemathesis
from pydantic import BaseModel, ValidationError
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import Failure
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from agata.protocol import operations as ops

from .harness import Seeded, gateway_document

#: Examples per operation and phase; raise it for a deeper run (e.g. 500, ~10 min).
MAX_EXAMPLES = int(os.environ.get("AGATA_SCHEMATHESIS_EXAMPLES", "40"))

SEMANTIC_REFUSALS = re.compile(
    r"^(invalid arguments: files: file '.*' is listed twice"
    # a string that is not a criteria expression,
    r"|selection criteria( are not a valid expression)?: .*"
    # a device or task filter (q) that is neither terms nor criteria
    r"|q: .*"
    # a task started before its bundle was uploaded (a state, arguably 409)
    r"|task \S+ has no server\.py and no client\.py in its bundle; .*"
    # a listed file name outside the bundle name rule (Unicode categories, NFKC
    # lookalikes, hidden names: agata/protocol/bundle_names.py; checked on the listing
    # since BundleFile is the one shape of a listed file, so the reason is under "files")
    r"|invalid arguments: files: file name .*)$"
)
MODELS: dict[str, type[BaseModel]] = {
    **{f"/{name}": model for name, model in ops.OPERATION_MODELS.items()},
    "/api/devices/enroll": ops.EnrollDevice,
}


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _detail(response: Any) -> str:
    try:
        detail = response.json().get("detail", "")
    except (ValueError, AttributeError):
        return ""
    return detail if isinstance(detail, str) else ""


def positive_data_acceptance_but_semantic_refusals(ctx: Any, response: Any, case: Any) -> Any:
    """``positive_data_acceptance``, except a 400 for one of :data:`SEMANTIC_REFUSALS`."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except Failure:
        if response.status_code == 400 and SEMANTIC_REFUSALS.match(_detail(response)):
            return None
        raise


def negative_data_rejection_but_lax_coercions(ctx: Any, response: Any, case: Any) -> Any:
    """``negative_data_rejection``, except a body that the gateway accepted only by
    converting it (lax mode): what it forwards then differs from what was sent."""
    try:
        return negative_data_rejection(ctx, response, case)
    except Failure:
        model = MODELS.get(case.operation.path)
        if model is None or not isinstance(case.body, dict):
            raise
        try:
            forwarded = model.model_validate(case.body).model_dump(mode="json", exclude_unset=True)
        except ValidationError:
            raise  # refused by the model yet accepted by the gateway: a real failure
        if _json(forwarded) == _json(case.body):  # (as JSON: in Python, 0 == False)
            raise  # accepted as sent: the document and the validation disagree
        return None


DOCUMENT = gateway_document()
CONFIG = SchemathesisConfig.from_dict(
    {
        "generation": {"max-examples": MAX_EXAMPLES},
        "request-timeout": 15,
        "suppress-health-check": ["all"],
        "checks": {
            "positive_data_acceptance": {"enabled": False},
            "negative_data_rejection": {"enabled": False},
        },
    }
)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG).exclude(path_regex=r"/stream$")


@schema.parametrize()
def test_gateway_conforms_to_its_openapi_document(case: Any, seeded: Seeded) -> None:
    case.call_and_validate(
        base_url=seeded.url,
        headers={"Authorization": f"Bearer {seeded.operator}"},
        additional_checks=[
            positive_data_acceptance_but_semantic_refusals,
            negative_data_rejection_but_lax_coercions,
        ],
    )


def test_the_served_document_is_the_one_fuzzed(seeded: Seeded) -> None:
    served = httpx.get(f"{seeded.url}/openapi.json").json()

    assert served == DOCUMENT


def test_the_document_has_no_422_and_declares_auth(seeded: Seeded) -> None:
    document = httpx.get(f"{seeded.url}/openapi.json").json()

    statuses = {
        (method.upper(), path): set(operation["responses"])
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }
    public = {
        path
        for path, item in document["paths"].items()
        for operation in item.values()
        if operation.get("security") == []
    }

    assert all("422" not in found for found in statuses.values())
    assert all("400" in found for key, found in statuses.items() if key[0] == "POST")
    assert document["security"] == [{"bearer": []}]
    assert public == {"/healthz", "/metrics", "/api/devices/enroll", "/rpc_exec_enroll_device"}
    assert "HTTPValidationError" not in document["components"]["schemas"]
