"""schemathesis checks of our own, loaded by tests/test_fuzz.py through SCHEMATHESIS_HOOKS."""

from __future__ import annotations

import json
from typing import Any

import schemathesis

ENVELOPE_KEYS = ["isSuccess", "errors", "result"]


@schemathesis.check
def every_json_answer_is_an_envelope(ctx: Any, response: Any, case: Any) -> None:
    """API.md: every JSON answer is `{isSuccess, errors, result}` in that key order, whatever
    the status, a success with no errors, a failure with at least one code and no result."""
    content_type = next((values[0] for name, values in response.headers.items()
                         if name.lower() == "content-type"), "")
    if not content_type.startswith("application/json"):
        return
    body = json.loads(response.content)  # insertion order is the wire's key order
    assert isinstance(body, dict), f"not an envelope: {body!r}"
    assert list(body) == ENVELOPE_KEYS, f"not an envelope: {body!r}"
    if body["isSuccess"] is True:
        assert body["errors"] is None, f"a success with errors: {body!r}"
    else:
        assert body["isSuccess"] is False, f"isSuccess is not a boolean: {body!r}"
        assert body["result"] is None, f"a failure with a result: {body!r}"
        assert body["errors"], f"a failure without codes: {body!r}"
        for error in body["errors"]:
            assert isinstance(error, dict), f"malformed errors: {body!r}"
            assert list(error) == ["errorCode"], f"malformed errors: {body!r}"
            assert isinstance(error["errorCode"], str), f"malformed errors: {body!r}"
