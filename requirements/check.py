"""Check the lock files: that they still satisfy their loose inputs, and that what is installed is
what they pin.

    python requirements/check.py            # both checks, for the environment running it (.ci/run)
    python requirements/check.py --static   # only lock vs pyproject.toml / serve.in (no install needed)

Exits 1 with one line per problem and the command that fixes it. Standard library + ``packaging``.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
TEST_LOCK = ROOT / "requirements" / "test.lock"
SERVE_LOCK = ROOT / "requirements" / "serve.lock"
SERVE_IN = ROOT / "requirements" / "serve.in"
REFRESH = "bash requirements/refresh.sh"


def read_requirements(path: Path) -> list[Requirement]:
    """The requirement lines of a requirements/lock file (comments and options skipped)."""
    reqs = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            reqs.append(Requirement(line))
    return reqs


def locked_versions(lock: Path, extra: str = "") -> dict[str, Version]:
    """name -> pinned version, for the pins whose markers hold in this environment."""
    env = {"extra": extra}
    pins = {}
    for req in read_requirements(lock):
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        (spec,) = req.specifier
        if spec.operator != "==":
            raise ValueError(f"{lock.name}: {req} is not an exact pin")
        pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def project_requirements(extras: tuple[str, ...] = ("test",)) -> list[Requirement]:
    """pyproject.toml's dependencies plus ``extras`` (self-references like ``pkg[ray]`` expanded)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name = canonicalize_name(project["name"])
    optional = project.get("optional-dependencies", {})
    reqs, todo, seen = [Requirement(r) for r in project["dependencies"]], list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for line in optional.get(extra, []):
            req = Requirement(line)
            if canonicalize_name(req.name) == name:
                todo.extend(req.extras)
            else:
                reqs.append(req)
    return reqs


def unsatisfied(reqs: list[Requirement], pins: dict[str, Version], lock_name: str) -> list[str]:
    problems = []
    for req in reqs:
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is None:
            problems.append(f"{lock_name} has no pin for {req}")
        elif not req.specifier.contains(pinned, prereleases=True):
            problems.append(f"{lock_name} pins {req.name}=={pinned}, which does not satisfy {req}")
    return problems


def static_problems() -> list[str]:
    """Where a lock no longer satisfies its loose input (pyproject.toml or requirements/serve.in)."""
    problems = unsatisfied(project_requirements(), locked_versions(TEST_LOCK), TEST_LOCK.name)
    problems += unsatisfied(read_requirements(SERVE_IN), locked_versions(SERVE_LOCK), SERVE_LOCK.name)
    return problems


def installed_problems(lock: Path = TEST_LOCK) -> list[str]:
    """Where this environment's installed versions differ from the lock's pins."""
    problems = []
    for name, pinned in sorted(locked_versions(lock).items()):
        try:
            installed = Version(version(name))
        except PackageNotFoundError:
            problems.append(f"{name}=={pinned} is locked but not installed")
            continue
        if installed != pinned:
            problems.append(f"{name} {installed} is installed, {lock.name} pins {pinned}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--static", action="store_true", help="only check the locks against their inputs")
    args = parser.parse_args(argv)
    static = static_problems()
    for problem in static:
        print(f"lock out of date: {problem}; run `{REFRESH}`", file=sys.stderr)
    installed = [] if args.static else installed_problems()
    for problem in installed:
        print(f"install differs from the lock: {problem}; run `pip install -r requirements/test.lock -e '.[test]'`",
              file=sys.stderr)
    if static or installed:
        return 1
    print("locks satisfy pyproject.toml and requirements/serve.in" + ("" if args.static else "; installed = test.lock"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
