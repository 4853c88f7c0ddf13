"""A request that fails validation, as OpenAI's 400: the first problem, its parameter named as the
client wrote it (`messages.0.content`), never pydantic's own location labels."""

from __future__ import annotations

import json

from fastapi.exceptions import RequestValidationError

from tinytitan.serve.limits import ApiError


def validation_error(error: RequestValidationError) -> ApiError:
    """The first problem as OpenAI's 400, its parameter named as the client wrote it."""
    problems = [(_param(p.get("loc", ()), error.body), p) for p in error.errors()]
    param, first = problems[0]
    # a union (stop: text or list) reports one error per member: prefer the member the input is
    same = [p for name, p in problems if name == param]
    first = next((p for p in same if not p.get("type", "").endswith("_type")), first)
    kind = first.get("type", "")
    if kind == "json_invalid":
        return ApiError(400, "the request body is not valid JSON", None, "invalid_json")
    if kind == "missing" and not param:
        return ApiError(400, "the request needs a JSON body", None, "missing_body")
    if kind == "extra_forbidden":
        message = f"{param}: unknown or unsupported parameter"
    elif kind == "missing":
        message = f"{param}: required"
    else:
        message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
        if "input" in first and not isinstance(first["input"], (dict, list)):
            message += f" (got {json.dumps(first['input'], default=str)[:80]})"
    return ApiError(400, message, param, "missing_parameter" if kind == "missing" else "invalid_value")


def _param(location, body) -> str | None:
    """`messages.0.content` from pydantic's location, leaving out its union-member and tag labels:
    a part counts only where the request body has that key or index."""
    parts, node = [], body
    for part in location[1:] if location and location[0] == "body" else location:
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and not _is_label(part):
            node = None  # a missing or unknown key: named, and the walk ends
        else:
            continue
        parts.append(str(part))
        if node is None:
            break
    return ".".join(parts) or None


def _is_label(part: str) -> bool:
    return part in {"str", "int", "float", "bool", "list", "dict", "none", "text", "json_object", "json_schema"} or \
        any(c in part for c in "[-")
