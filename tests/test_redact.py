"""Masking the API key in text the library builds: c2sync/_redact.py.

The end-to-end proof, servers echoing the key in every field they can, is
tests/test_echoed_key.py.
"""

from __future__ import annotations

import json

from c2sync._redact import MASK, MIN_REMEMBERED, Redactor, mask, redact, remember

from .conftest import API_KEY


def test_redact_masks_every_copy_and_a_key_cut_off_at_the_end() -> None:
    """A text quoting the key, or ending in the middle of it, keeps none of it."""
    assert redact(f"bad key {API_KEY} and {API_KEY}", API_KEY) == f"bad key {MASK} and {MASK}"
    assert redact(f"bad key {API_KEY[:12]}", API_KEY) == f"bad key {MASK}"
    assert redact("nothing to hide", API_KEY, "") == "nothing to hide"


def test_a_redactor_masks_the_key_as_a_repr_or_json_writes_it() -> None:
    """A key with characters a repr or JSON escapes is masked in those forms too, and the
    redactor's own repr does not show it."""
    key = 'k\u00e9y-"quoted"\\-0123456789'
    hide = Redactor(key)
    assert hide(json.dumps({"echo": key})) == json.dumps({"echo": MASK})
    for shown in (repr(key), repr([key]), repr({"echo": key})):
        assert "0123456789" not in hide(shown), shown
    assert key not in repr(hide) and not Redactor("")


def test_remembered_keys_are_masked_only_when_long_enough() -> None:
    """A client's key is masked by mask() (message reprs) from the moment it is remembered;
    a key too short to be a real one is not, so it cannot garble ordinary words."""
    remember(API_KEY)
    remember("k")
    remember(API_KEY)  # again: nothing changes
    assert len("k") < MIN_REMEMBERED <= len(API_KEY)
    assert mask(f"x.k {API_KEY}") == f"x.k {MASK}"
    assert mask(repr({"echo": API_KEY})) == repr({"echo": MASK})
