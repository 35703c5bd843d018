"""The address `serve` prints for a request to try."""

from __future__ import annotations

import pytest

from modelport.server.example import base_url


@pytest.mark.parametrize(("host", "url"), [
    ("127.0.0.1", "http://127.0.0.1:8000"),
    ("0.0.0.0", "http://127.0.0.1:8000"),  # every IPv4 address: reached on loopback
    ("::", "http://[::1]:8000"),
    ("::1", "http://[::1]:8000"),
    ("fe80::1", "http://[fe80::1]:8000"),
    ("localhost", "http://localhost:8000"),
    ("scoring.internal", "http://scoring.internal:8000"),
])
def test_the_url_to_reach_a_server_listening_on_host(host: str, url: str) -> None:
    assert base_url(host, 8000) == url
