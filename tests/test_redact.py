"""Masking the API key in text the library builds: c2sync/_redact.py.

The end-to-end proof, servers echoing the key in every field they can, is
tests/test_echoed_key.py.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from c2sync._redact import MASK, MIN_REMEMBERED, MIN_TAIL, Redactor, mask, redact, remember

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


ODD_KEY = "sk/test+5f3c9a1e7b2d4c6a8e0f=="  # "/", "+", "=": what encoders escape


def _every_char_escaped(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


def test_a_redactor_masks_every_escaped_spelling_of_the_key() -> None:
    """Issue 25 item 1: the key as PHP's json_encode (``\\/``), .NET (``\\u002B``), every
    character as ``\\uXXXX``, percent-encoded (upper or lower hex, every byte or only the
    reserved ones), and cut off at the end of a text inside an escape: masked; text around
    it kept, and text without the key left alone (backslashes and percents included)."""
    hide = Redactor(ODD_KEY)
    percent_all = "".join(f"%{b:02x}" for b in ODD_KEY.encode())
    for spelling in (
        ODD_KEY.replace("/", "\\/"),
        ODD_KEY.replace("+", "\\u002B"),
        _every_char_escaped(ODD_KEY),
        quote(ODD_KEY, safe=""),
        quote(ODD_KEY, safe="").lower(),
        percent_all,
        percent_all.upper(),
    ):
        assert hide(f'{{"message":"bad key {spelling}"}}') == '{"message":"bad key ***"}'
        assert hide(f"Location: /login?key={spelling}&next=1") == "Location: /login?key=***&next=1"
    cut = f'{{"message":"bad key {_every_char_escaped(ODD_KEY)}'[:-9]  # inside an escape
    assert ODD_KEY[:8] not in json.loads(hide(cut) + '"}')["message"]
    assert hide(cut).endswith("bad key ***")
    for harmless in ("C:\\path\\to 100% done", "\\u0041 %41", '"\\"quoted\\""'):
        assert hide(harmless) == harmless


def test_a_redactor_masks_a_surrogate_pair_written_as_two_escapes() -> None:
    """A key with a character beyond the BMP, which JSON writes as two \\u escapes."""
    key = "key-\U0001f511-0123456789"
    written = json.dumps(key)[1:-1]  # key-\ud83d\udd11-0123456789
    assert Redactor(key)(f"echo {written}") == "echo ***"
    mixed = written.replace("-", "\\u002d")  # a dash escaped too: not a form, decoded
    assert Redactor(key)(f"echo {mixed}") == "echo ***"


def test_every_cut_of_the_key_at_the_end_of_a_text_is_masked() -> None:
    """A text cut anywhere from MIN_TAIL characters into the key to one short of its end
    keeps none of it; a shorter tail is left alone (masking 1-3 characters would garble
    ordinary words)."""
    for size in range(MIN_TAIL, len(API_KEY)):
        assert redact(f"echo {API_KEY[:size]}", API_KEY) == f"echo {MASK}", size
    short = API_KEY[: MIN_TAIL - 1]
    assert redact(f"echo {short}", API_KEY) == f"echo {short}"


def test_the_repr_and_json_forms_are_masked_whole() -> None:
    """A key a repr escapes is replaced whole in a repr: nothing of it is left around the
    mask."""
    key = 'k\u00e9y-"quoted"\\-0123456789'
    hide = Redactor(key)
    assert hide(repr(key)) == repr(MASK)
    assert hide(repr([key, 1])) == repr([MASK, 1])
    assert hide(json.dumps([key])) == json.dumps([MASK])


def test_a_key_of_exactly_the_remembered_length_is_masked_in_reprs() -> None:
    key = "Zq8#kW2!"  # MIN_REMEMBERED characters, unlike any word a repr shows
    assert len(key) == MIN_REMEMBERED
    remember(key)
    assert mask(f"echo {key}") == f"echo {MASK}"
