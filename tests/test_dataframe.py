"""c2sync.to_dataframe (extra [pandas]): one row per message in order, fixed first columns
and dtypes, payload fields flattened with "."; without pandas, an ImportError naming the
extra while the rest of the library works (docs/api-contract.md "Data frames")."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import c2sync

FIXED = ["msg_type", "strategy_id", "seq_id", "timestamp"]


def frame_of(obj: dict[str, Any]) -> c2sync.Message:
    return c2sync.parse_message(json.dumps(obj))


def signal(seq: int, payload: dict[str, Any], when: str = "2024-01-01T12:00:00Z") -> Any:
    return frame_of(
        {"msg_type": "strategy.signal", "seq_id": seq, "timestamp": when, "payload": payload}
    )


# With pandas ---------------------------------------------------------------------------


@pytest.fixture
def pd() -> Any:
    return pytest.importorskip("pandas")


def test_rows_in_order_with_fixed_columns_and_flattened_payload(pd: Any) -> None:
    """Each message is a row, in order; nested payload keys become dotted columns in the
    order they first appear."""
    messages = [
        signal(1, {"StrategyId": 7, "C2Symbol": {"FullSymbol": "ESZ4", "Type": "future"}}),
        signal(2, {"StrategyId": 7, "C2Symbol": {"FullSymbol": "NQZ4"}, "Side": "1"}),
        frame_of({"msg_type": "strategy.positions", "payload": {"StrategyId": 7, "Qty": 3}}),
    ]
    frame = c2sync.to_dataframe(messages)
    assert list(frame.columns) == [
        *FIXED,
        "StrategyId",
        "C2Symbol.FullSymbol",
        "C2Symbol.Type",
        "Side",
        "Qty",
    ]
    assert list(frame["msg_type"]) == ["strategy.signal"] * 2 + ["strategy.positions"]
    assert frame["seq_id"][:2].tolist() == [1, 2] and pd.isna(frame["seq_id"][2])
    assert list(frame["strategy_id"]) == [7, 7, 7]
    assert frame["C2Symbol.FullSymbol"][:2].tolist() == ["ESZ4", "NQZ4"]
    assert pd.isna(frame["C2Symbol.FullSymbol"][2])
    assert pd.isna(frame["C2Symbol.Type"][1]) and pd.isna(frame["Side"][0])
    assert frame["timestamp"][0] == pd.Timestamp("2024-01-01T12:00:00Z")


def test_fixed_dtypes_whatever_the_messages(pd: Any) -> None:
    """The first four columns keep their dtypes: with values, with none missing, empty."""
    expected = ["object", "Int64", "Int64", "datetime64[ns, UTC]"]
    cases: list[list[c2sync.Message]] = [
        [],
        [frame_of({"msg_type": "custom.thing"})],
        [signal(1, {"StrategyId": 7}), frame_of({"msg_type": "custom.thing"})],
    ]
    for messages in cases:
        frame = c2sync.to_dataframe(messages)
        assert list(frame.columns[:4]) == FIXED
        assert [str(t) for t in frame.dtypes[:4]] == expected, messages
        assert len(frame) == len(messages)


def test_same_messages_same_columns_and_dtypes(pd: Any) -> None:
    """Stable: the same messages give the same columns and dtypes every time."""
    messages = [signal(i, {"b": i, "a": {"z": "x", "y": [i]}}) for i in range(1, 4)]
    first, second = c2sync.to_dataframe(messages), c2sync.to_dataframe(list(messages))
    assert list(first.columns) == list(second.columns) == [*FIXED, "b", "a.z", "a.y"]
    assert list(first.dtypes) == list(second.dtypes)
    assert first["a.y"][2] == [3]  # lists stay Python lists


def test_payload_names_clashing_with_fixed_columns_are_prefixed(pd: Any) -> None:
    """A payload's own strategy_id or seq_id does not overwrite the message's."""
    frame = c2sync.to_dataframe([signal(5, {"strategy_id": 9, "seq_id": "x", "timestamp": 1})])
    clashing = ["payload.strategy_id", "payload.seq_id", "payload.timestamp"]
    assert list(frame.columns) == [*FIXED, *clashing]
    assert frame["seq_id"][0] == 5 and frame["payload.seq_id"][0] == "x"


def test_extreme_values_lose_nothing_or_say_so(pd: Any) -> None:
    """seq_ids beyond 64 bits stay exact (object column); a timestamp beyond datetime64[ns]
    is NaT rather than an error; a deeply nested payload flattens."""
    huge = frame_of({"msg_type": "custom.thing", "seq_id": 2**70})
    far = frame_of({"msg_type": "custom.thing", "timestamp": "9999-01-01T00:00:00Z"})
    frame = c2sync.to_dataframe([huge, far])
    assert frame["seq_id"][0] == 2**70
    assert pd.isna(frame["timestamp"][1])
    deep: dict[str, Any] = {"v": 1}
    for _ in range(3000):
        deep = {"k": deep}
    nested = c2sync.to_dataframe([c2sync.Message(msg_type="x", payload=deep)])
    assert nested.columns[-1] == ".".join(["k"] * 3000 + ["v"])


def test_not_messages_is_a_type_error(pd: Any) -> None:
    """Anything but c2sync messages is refused clearly."""
    with pytest.raises(TypeError, match="c2sync messages"):
        c2sync.to_dataframe([{"msg_type": "strategy.signal"}])


# Without pandas ------------------------------------------------------------------------

_WITHOUT_PANDAS = textwrap.dedent(
    """
    import sys

    class HidePandas:
        def find_spec(self, name, path=None, target=None):
            if name == "pandas" or name.startswith("pandas."):
                raise ModuleNotFoundError("No module named 'pandas'", name="pandas")
            return None

    sys.meta_path.insert(0, HidePandas())
    for name in [n for n in sys.modules if n == "pandas" or n.startswith("pandas.")]:
        del sys.modules[name]

    import c2sync

    assert "pandas" not in sys.modules, "import c2sync imported pandas"
    message = c2sync.parse_message('{"msg_type":"strategy.signal","seq_id":1}')
    try:
        c2sync.to_dataframe([message])
    except ImportError as exc:
        print(exc)
    else:
        raise SystemExit("to_dataframe worked without pandas")
    """
)


def test_without_pandas_import_error_names_the_extra() -> None:
    """Without pandas, import c2sync works and does not import it; to_dataframe raises
    ImportError saying how to install the extra."""
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_PANDAS],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    text = done.stdout.strip()
    assert 'pip install ".[pandas]"' in text
