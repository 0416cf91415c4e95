"""Behind a trusted reverse proxy (`gateway.trusted_proxies: [127.0.0.1/32]`), context.ip is the
client address from X-Forwarded-For: the rightmost hop that is not a trusted proxy."""

from __future__ import annotations

import pytest

from tests.http._helpers import AUTH, assert_ok, new_id, stored_one, track
from tests.support.server import HeadwaterServer


@pytest.mark.parametrize(
    ("forwarded", "expected"),
    [
        (None, "127.0.0.1"),
        ("198.51.100.7", "198.51.100.7"),
        # the client sent its own (spoofed) header; the proxy appended the real address
        ("203.0.113.5, 198.51.100.7", "198.51.100.7"),
        # a chain of trusted proxies in front
        ("198.51.100.7, 127.0.0.1", "198.51.100.7"),
        ("2001:db8::1", "2001:db8::1"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
def test_context_ip_comes_from_x_forwarded_for_of_a_trusted_proxy(
    alt_server: HeadwaterServer, path: str, forwarded: str | None, expected: str
) -> None:
    mid = new_id()
    headers = dict(AUTH)
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    body = track(mid) if path == "/v1/track" else {"batch": [track(mid)]}
    with alt_server.client() as http:
        assert_ok(http.post(path, json=body, headers=headers))
    assert stored_one(alt_server, mid)["context"]["ip"] == expected


def test_the_client_context_ip_wins_over_x_forwarded_for(alt_server: HeadwaterServer) -> None:
    mid = new_id()
    with alt_server.client() as http:
        r = http.post(
            "/v1/track",
            json=track(mid, context={"ip": "192.0.2.44"}),
            headers={**AUTH, "X-Forwarded-For": "198.51.100.7"},
        )
    assert_ok(r)
    assert stored_one(alt_server, mid)["context"]["ip"] == "192.0.2.44"
