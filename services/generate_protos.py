"""Regenerate the committed Python stubs in ``services/proto/`` from ``protos/``.

Run ``python -m services.generate_protos`` after editing a ``.proto`` file; a test fails when
the committed stubs drift from the ``.proto``. Drift is judged with the generator's own version
stamps set aside (``normalise``): a newer grpcio-tools or protoc writes the same code under a newer
version line, which is no change of the API. The committed stamps are the floor the stubs' runtime
guards check (grpcio and protobuf at least that version), so they stay at the lowest versions
``pyproject.toml`` admits. grpcio-tools writes absolute imports
(``from adapt.inspection.v1 import inspection_pb2``) that would clash with the ``adapt``
library package, so the generated files are placed flat in ``services/proto/`` and their
imports made package-relative. The descriptor keeps its canonical file name
(``adapt/inspection/v1/inspection.proto``) in the default pool, for server reflection.
"""

from __future__ import annotations

import importlib.resources
import re
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
PROTO_FILES = ("adapt/inspection/v1/inspection.proto",)
OUT_DIR = Path(__file__).resolve().parent / "proto"

_IMPORT = re.compile(r"^from adapt\.inspection\.v1 import (\w+_pb2) as", re.MULTILINE)
# the messages' __module__: the module they really live in, so they pickle (Ray ships requests pickled)
_MODULE = re.compile(r"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, )'adapt\.inspection\.v1\.\w+_pb2'")

# The lines in which a generator stamps its own version (and nothing about the .proto).
_VERSION_STAMPS = (
    re.compile(r"^GRPC_GENERATED_VERSION = '[^']*'$", re.MULTILINE),
    re.compile(r"^# Protobuf Python Version: .*$", re.MULTILINE),
    re.compile(r"(ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,)\s*\d+,\s*\d+,\s*\d+,\s*'[^']*',"),
)


def normalise(text: str) -> str:
    """``text`` of a generated stub with the generator's version stamps replaced by a placeholder."""
    for stamp in _VERSION_STAMPS:
        text = stamp.sub(lambda m: (m.group(1) if m.groups() else "") + "<generator version>", text)
    return text


def stale_stubs(proto_root: Path = PROTO_ROOT, committed_dir: Path = OUT_DIR) -> list[str]:
    """Names of the stubs in ``committed_dir`` whose code differs from a fresh ``generate`` of
    ``proto_root`` (version stamps aside); a stub missing from ``committed_dir`` counts as stale."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p.read_text() for p in generate(Path(tmp), proto_root)}
    stale = []
    for name, text in sorted(fresh.items()):
        committed = committed_dir / name
        if not committed.is_file() or normalise(committed.read_text()) != normalise(text):
            stale.append(name)
    return stale


def generate(out_dir: Path = OUT_DIR, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Compile every file of ``PROTO_FILES`` into ``out_dir``; return the files written."""
    from grpc_tools import protoc

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *PROTO_FILES,
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {', '.join(PROTO_FILES)}")
        for generated in sorted(Path(tmp).rglob("*_pb2*.py*")):
            text = _MODULE.sub(r"\1__name__", _IMPORT.sub(r"from . import \1 as", generated.read_text()))
            target = out_dir / generated.name
            target.write_text(text)
            written.append(target)
    return written


def main() -> int:
    for path in generate():
        sys.stdout.write(f"wrote {path.relative_to(REPO_ROOT)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
