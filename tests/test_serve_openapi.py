"""The whole API against its own OpenAPI document: schemathesis sends what the schema allows (and what it
does not), every check on; a 5xx or a failed check fails the test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.test_serve import KEY, fleet, server  # noqa: F401  (fixtures too)


SEMANTIC = {"context_length_exceeded", "invalid_message_order", "invalid_schema", "unsupported_schema_feature"}


def body_text(response: dict):
    """The body of a response in a schemathesis report (text, or bytes it stored as base64)."""
    import base64

    body = response.get("content") or {}
    return base64.b64decode(body["$base64"]) if "$base64" in body else body.get("string", "")


def test_schemathesis_all_checks(server, tmp_path):
    """schemathesis with every check against /openapi.json: no 5xx at all, and no failure but requests the
    schema cannot judge (a prompt longer than the context, a response schema it cannot enforce).
    FUZZ_SECONDS=600 fuzzes longer (default 60); a 5xx is reported with its body and request."""
    import subprocess
    import sys

    url = server[0]
    result = subprocess.run([str(Path(sys.executable).with_name("schemathesis")), "run", f"{url}/openapi.json",
                             "--checks", "all", "-H", f"Authorization: Bearer {KEY}", "--max-time", os.environ.get("FUZZ_SECONDS", "60"),
                             "--seed", "1", "--report", "ndjson", "--report-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    (report,) = tmp_path.glob("*.ndjson")
    statuses, failures, server_errors = [], [], []
    for line in report.read_text().splitlines():
        event = json.loads(line).get("ScenarioFinished")
        if not event:
            continue
        recorder = event["recorder"]
        for case_id, interaction in recorder.get("interactions", {}).items():
            response = interaction.get("response") or {}
            statuses.append(response.get("status_code"))
            if response.get("status_code") is None or response["status_code"] >= 500:
                server_errors.append((response.get("status_code"), body_text(response)[:300],
                                      interaction.get("request")))
            for check in recorder.get("checks", {}).get(case_id, []):
                if check["status"] == "failure":
                    failures.append((check["failure_info"]["failure"]["code"], response.get("status_code"),
                                     body_text(response),
                                     check["failure_info"]["failure"].get("message"), interaction.get("request")))
    assert len(statuses) > 500, result.stdout[-2000:]  # it really ran
    assert not server_errors, f"{len(server_errors)} 5xx responses, the first: {server_errors[0]}"
    for code, status, text, message, request in failures:
        assert code == "ST202" and status == 400, (code, status, message, request)
        assert json.loads(text or "null")["error"]["code"] in SEMANTIC, (text[:500], request)


