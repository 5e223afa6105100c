"""Every file a comment or docstring in c2sync/ cites is in the repository, so a reader can
follow "docs/protocol.md section 5" without access to anything outside it."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "c2sync"
# A cited document: a name ending in .md/.rst/.ipynb, or a path with a folder ending in .py.
CITED = re.compile(
    r"(?<![\w./-])((?:[\w.-]+/)*[\w.-]+\.(?:md|rst|ipynb)|(?:[\w.-]+/)+[\w.-]+\.py)\b"
)


def citations(path: Path) -> list[tuple[int, str]]:
    """``(line, cited path)`` for each citation in the comments and string literals
    (docstrings included) of one source file."""
    found = []
    source = path.read_text(encoding="utf-8")
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.COMMENT, tokenize.STRING):
            for match in CITED.finditer(token.string):
                found.append((token.start[0], match.group(1)))
    return found


def resolves(cited: str, source: Path) -> bool:
    """A citation names a path from the repository's root, or from the citing file."""
    return (ROOT / cited).is_file() or (source.parent / cited).is_file()


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_the_scan_finds_citations() -> None:
    """The scanner sees the package's citations (a scanner that finds none proves nothing)."""
    cited = {name for source in SOURCES for _, name in citations(source)}
    assert "docs/protocol.md" in cited
    assert "docs/api-contract.md" in cited


def test_the_scan_catches_a_missing_file(tmp_path: Path) -> None:
    """A comment citing a file the repository lacks is caught, in a comment or a docstring."""
    source = tmp_path / "example.py"
    source.write_text(
        '"""Rules from PROTOCOL.md section 5."""\n\nx = 1  # see docs/nowhere.md "Closing"\n',
        encoding="utf-8",
    )
    missing = [name for _, name in citations(source) if not resolves(name, source)]
    assert missing == ["PROTOCOL.md", "docs/nowhere.md"]


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_cited_file_exists(source: Path) -> None:
    """Each document cited in this module's comments and docstrings is in the repository."""
    missing = [
        f"line {line}: {name}" for line, name in citations(source) if not resolves(name, source)
    ]
    assert not missing, f"{source.relative_to(ROOT)} cites files the repository lacks: {missing}"


def public_docstrings() -> dict[str, str]:
    """The docstrings a user of the installed package reads (``help()``, the API reference):
    the public modules', and every public name's with its public members'."""
    import importlib
    import inspect

    modules = ["c2sync", "c2sync.emulator"]
    found: dict[str, str] = {}
    for module_name in modules:
        module = importlib.import_module(module_name)
        found[module_name] = module.__doc__ or ""
        for name in module.__all__:
            value = getattr(module, name)
            owner = getattr(value, "__module__", module_name) or module_name
            if not owner.startswith("c2sync"):
                continue
            found[f"{module_name}.{name}"] = inspect.getdoc(value) or ""
            if inspect.isclass(value):
                for member, attribute in vars(value).items():
                    if member.startswith("_") and member != "__init__":
                        continue
                    doc = inspect.getdoc(attribute) if not isinstance(attribute, str) else None
                    if doc:
                        found[f"{module_name}.{name}.{member}"] = doc
    return found


def test_public_docstrings_cite_no_repository_file() -> None:
    """What ``help()`` and the reference show cites no file of the repository ("see
    docs/api-contract.md"): a user who installed the wheel has none of them. Section names,
    or the documentation's URL, instead; comments may still cite files for developers."""
    cited = {
        where: sorted({m.group(1) for m in CITED.finditer(doc)})
        for where, doc in public_docstrings().items()
        if CITED.search(doc)
    }
    assert not cited


def test_the_public_docstrings_are_found() -> None:
    """The scan reads the docstrings help() shows (a scan that reads none proves nothing)."""
    docs = public_docstrings()
    assert "c2sync.Client" in docs and "c2sync.Client.subscribe" in docs
    assert "c2sync.emulator.Emulator" in docs
    assert "next message" in docs["c2sync.Client.recv"]
