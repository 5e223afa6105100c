"""Print pip constraints pinning every requirement in setup.cfg to its declared floor.

Usage: ``python .ci/floors.py [OUTPUT]`` (standard output without one). The floors are
those that apply to the interpreter running this script: a requirement whose environment
marker is false here (e.g. ``websocket-client==1.9.0; python_version < "3.10"`` on 3.13)
is left out. Every requirement, runtime and every extra, must declare a lower bound
(``>=``, ``~=`` or ``==``); one without is an error, since no test could vouch for it.
The noxfile's ``floors`` session installs the project with all its extras under these
constraints and runs the suite and the demo; tests/test_packaging.py checks that what got
installed is exactly this.
"""

from __future__ import annotations

import configparser
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def declared(setup_cfg: Path = ROOT / "setup.cfg") -> dict[str, list[Requirement]]:
    """Every requirement in setup.cfg, keyed by "" (runtime) or the extra's name."""
    config = configparser.ConfigParser()
    config.read(setup_cfg, encoding="utf-8")

    def lines(text: str) -> list[Requirement]:
        return [Requirement(line) for line in text.splitlines() if line.strip()]

    found = {"": lines(config.get("options", "install_requires", fallback=""))}
    if config.has_section("options.extras_require"):
        for extra, text in config.items("options.extras_require"):
            found[extra] = lines(text)
    return found


def floor(requirement: Requirement) -> Version:
    """The lowest version a requirement admits, by its specifiers."""
    bounds = [
        Version(spec.version)
        for spec in requirement.specifier
        if spec.operator in (">=", "~=", "==")
    ]
    if not bounds:
        raise ValueError(f"{requirement} declares no lower bound")
    return max(bounds)


def floors(setup_cfg: Path = ROOT / "setup.cfg") -> dict[str, Version]:
    """The floor of every requirement that applies to this interpreter, by project name.

    A project named more than once (runtime and an extra, or two extras) gets the highest
    of its floors: installing everything at once can satisfy no lower one.
    """
    result: dict[str, Version] = {}
    for extra, requirements in declared(setup_cfg).items():
        for requirement in requirements:
            if requirement.marker is not None and not requirement.marker.evaluate(
                {"extra": extra}
            ):
                continue
            name = canonicalize_name(requirement.name)
            result[name] = max(result.get(name, Version("0")), floor(requirement))
    return dict(sorted(result.items()))


def main(argv: list[str]) -> int:
    text = "".join(f"{name}=={version}\n" for name, version in floors().items())
    if len(argv) > 1:
        Path(argv[1]).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
