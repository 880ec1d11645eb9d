"""Forged access tokens: what vpiska's `Tokens.issue` writes, signed with the run's JWT_KEY.

Why forge: signing up thousands of users over HTTP would measure argon2 (~33 ms each), not the
room. vpiska accepts any valid token for the WebSocket (the user need not exist in the store),
and so do the peers. Kept apart from seed.py so the load generator imports no server code.
"""

from __future__ import annotations

import time

import jwt

# ≥ 32 bytes so PyJWT does not warn; every server of the run gets the same key.
JWT_KEY = "bench-only-key-0123456789abcdef-0123456789abcdef"


def forge_token(user_id: str, name: str) -> str:
    claims = {"ID": user_id, "Name": name, "ImageID": "", "iss": "VpiskaServer",
              "aud": "VpiskaClient", "exp": int(time.time()) + 86400}
    return jwt.encode(claims, JWT_KEY, algorithm="HS256")
