"""Page links: signed with the API token, one incident each."""

from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr

from bridge.config.core import ApiSettings
from bridge.model import IncidentID
from bridge.web.auth import incident_page_link, page_key


def test_page_key_is_hmac_sha256_of_the_id() -> None:
    expected = hmac.new(b"tok", b"INC-4", hashlib.sha256).hexdigest()
    assert page_key("tok", IncidentID("INC-4")) == expected
    assert page_key("tok", IncidentID("INC-5")) != expected
    assert page_key("other", IncidentID("INC-4")) != expected


def test_link_for_chat_messages() -> None:
    api = ApiSettings(token=SecretStr("tok"))
    link = incident_page_link("https://bridge.example.org/", IncidentID("INC-4"), api)
    assert link == (
        "https://bridge.example.org/incidents/INC-4?key=" + page_key("tok", IncidentID("INC-4"))
    )


def test_no_link_without_a_token() -> None:
    assert incident_page_link("https://b.example.org", IncidentID("INC-4"), ApiSettings()) is None
    empty = ApiSettings(token=SecretStr(""))
    assert incident_page_link("https://b.example.org", IncidentID("INC-4"), empty) is None
