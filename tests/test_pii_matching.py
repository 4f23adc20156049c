"""PII keys match their fragments whatever the case, in the compiled mapper and in its twin.

The property tests in test_fast_twin.py only compare the two mappers, and
their generated keys reach a mixed-case spelling by chance: a matcher that
turned case-sensitive in both (or in the twin, the oracle) went unnoticed.
This table writes out, for each key, whether it is PII, and runs it through
both mappers at the three places a key is matched: a property, a nested
property (flattened to ``obj.key``) and an object inside an array (kept as
JSON text).
"""

import json
from types import ModuleType
from typing import Any

import pytest

from drengr.core.limits import DEFAULT_PII_SUBSTRINGS
from drengr.core.timestamps import parse_ms

from .support.mappers import MAPPERS

RECEIVED_MS = parse_ms("2026-11-26T02:50:53.123Z")
TENANT = "acme"
DEFAULTS = DEFAULT_PII_SUBSTRINGS

PII_CASES = [  # (the configured fragments, the key sent, whether it is PII)
    pytest.param(DEFAULTS, "email", True, id="lower"),
    pytest.param(DEFAULTS, "EMAIL", True, id="upper"),
    pytest.param(DEFAULTS, "Email", True, id="capitalised"),
    pytest.param(DEFAULTS, "eMaIl", True, id="mixed"),
    pytest.param(DEFAULTS, "userEmail", True, id="camel-inside"),
    pytest.param(DEFAULTS, "USER_EMAIL_ADDRESS", True, id="upper-snake"),
    pytest.param(DEFAULTS, "PhoneNumber", True, id="phone-pascal"),
    pytest.param(DEFAULTS, "First_NAME", True, id="name-upper"),
    pytest.param(DEFAULTS, "PASSWORD", True, id="password-upper"),
    pytest.param(DEFAULTS, "apiTOKEN", True, id="token-upper-tail"),
    pytest.param(DEFAULTS, "SSN", True, id="ssn-upper"),
    pytest.param(DEFAULTS, "CreditCard", True, id="card-pascal"),
    pytest.param(DEFAULTS, "CVV", True, id="cvv-upper"),
    pytest.param(DEFAULTS, "HOME_Address", True, id="address-mixed"),
    pytest.param(DEFAULTS, "EMAIL_é", True, id="non-ascii-key-upper-fragment"),
    pytest.param(DEFAULTS, "Plan", False, id="plain-capitalised"),
    pytest.param(DEFAULTS, "E_MAIL", False, id="fragment-split-by-underscore"),
    pytest.param(DEFAULTS, "EMAI", False, id="fragment-cut-short"),
    pytest.param(DEFAULTS, "ÉMAIL", False, id="accented-letter-is-not-e"),
    pytest.param(("EMAIL",), "email", True, id="upper-fragment-lower-key"),
    pytest.param(("EMAIL",), "Work_Email", True, id="upper-fragment-mixed-key"),
    pytest.param(("SeCrEt",), "MY_SECRET", True, id="mixed-fragment-upper-key"),
    pytest.param(("SeCrEt",), "my_secret", True, id="mixed-fragment-lower-key"),
    pytest.param(("SeCrEt",), "email", False, id="configured-list-replaces-defaults"),
    pytest.param(("e",), "KEY", True, id="one-letter-fragment-upper-key"),
    pytest.param(("E",), "key", True, id="one-letter-upper-fragment"),
    pytest.param(("e",), "XYZ", False, id="one-letter-fragment-absent"),
    pytest.param(("straße",), "STRAẞE", True, id="unicode-capital-sharp-s"),
    pytest.param(("straße",), "Straße_Nr", True, id="unicode-capitalised"),
    pytest.param(("straße",), "STRASSE", False, id="unicode-no-case-folding"),
    pytest.param(("ÄRZTIN",), "ärztin", True, id="unicode-upper-fragment"),
]  # fmt: skip


def mapped(mapper_module: ModuleType, fragments: tuple[str, ...], key: str) -> tuple[Any, Any, Any]:
    """(dims, measures, stripped) of one track whose properties hold ``key`` at three depths.

    No other key contains a letter of the one-letter fragments below; a name is reported once.
    """
    properties = {key: "v", "obj": {key: 1}, "list": [{key: 2, "ok": 3}], "plan": "pro"}
    body = json.dumps({"type": "track", "event": "e", "userId": "u", "properties": properties}).encode()
    rows, _, stripped = mapper_module.Mapper(fragments).parse(body).map(None, RECEIVED_MS, TENANT)
    [row] = rows
    return json.loads(row[8]), json.loads(row[9]), stripped


@pytest.mark.parametrize("mapper_module", MAPPERS)
@pytest.mark.parametrize(("fragments", "key", "is_pii"), PII_CASES)
def test_pii_fragments_match_whatever_the_case(mapper_module, fragments, key, is_pii):
    dims, measures, stripped = mapped(mapper_module, fragments, key)
    if is_pii:
        assert dims == {"plan": "pro", "list": '[{"ok":3}]'}
        assert measures == {}
        assert stripped == {"pii_key_removed": (3, (key, f"obj.{key}"))}
    else:
        assert dims == {
            key: "v",
            "plan": "pro",
            "list": json.dumps([{key: 2, "ok": 3}], separators=(",", ":"), ensure_ascii=False),
        }
        assert measures == {f"obj.{key}": 1}
        assert stripped == {}
