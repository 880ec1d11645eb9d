"""What vpiska's OpenAPI document holds."""

from __future__ import annotations

from vpiska.http.openapi import PATHS

HTTP_METHODS = {"get", "post", "put", "patch", "delete"}


def documented_operations() -> int:
    return sum(1 for item in PATHS.values() for method in item if method in HTTP_METHODS)
