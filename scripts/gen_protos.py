#!/usr/bin/env python
"""Generate (or check) the Python modules of kvsim's KVCM protos in ``kvsim/serve/proto/``.

    python scripts/gen_protos.py           # regenerate *_pb2.py, *_pb2.pyi and *_pb2_grpc.py
    python scripts/gen_protos.py --check   # exit 1 if the committed modules do not match the .proto files

Needs ``grpcio-tools`` (the ``dev`` extra). The committed modules were generated with grpcio-tools 1.75.1,
whose code runs on protobuf >= 6.31.1 and grpcio >= 1.75.1 (the floors in pyproject's ``all`` extra);
newer tools produce code that needs newer runtimes, so regenerate with that version when you can.

The check is semantic, so it passes with any grpcio-tools version: each committed ``*_pb2.py`` must embed
exactly the descriptor that compiling its ``.proto`` gives now, and each ``*_pb2_grpc.py`` must name
exactly the RPCs the ``.proto`` declares. Generated files get a ``# ruff: noqa`` / ``# fmt: off`` header so
that linting and formatting skip them.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "kvsim" / "serve" / "proto"
PROTOS = ("meta_service.proto", "admin_service.proto", "debug_service.proto", "kv_meta_service.proto")
HEADER = "# ruff: noqa\n# fmt: off\n"
_METHOD_PATH = re.compile(r"'/([\w.]+)/(\w+)'")


def _protoc(args: list[str]) -> None:
    from grpc_tools import protoc  # dev-only dependency: imported when the script runs

    include = str(Path(protoc.__file__).parent / "_proto")
    code = protoc.main(["grpc_tools.protoc", f"-I{ROOT}", f"-I{include}", *args])
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


def _relative(name: str) -> str:
    # Compiling from the repository root makes the generated imports absolute (kvsim.serve.proto.x_pb2).
    return str((PROTO_DIR / name).relative_to(ROOT))


def generate(out_root: Path = ROOT) -> list[Path]:
    """Compile every proto into ``out_root`` (the repository root by default); return the files written."""
    _protoc(
        [
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}",
            *(_relative(p) for p in PROTOS),
        ]
    )
    written = []
    out_dir = out_root / PROTO_DIR.relative_to(ROOT)
    for proto in PROTOS:
        stem = proto.removesuffix(".proto")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            path = out_dir / f"{stem}{suffix}"
            text = path.read_text(encoding="utf-8")
            if not text.startswith(HEADER):
                path.write_text(HEADER + text, encoding="utf-8")
            written.append(path)
    return written


def _fresh_descriptors() -> dict[str, object]:
    from google.protobuf import descriptor_pb2

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "protos.pb"
        _protoc([f"--descriptor_set_out={out}", *(_relative(p) for p in PROTOS)])
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    files = {}
    for f in fds.file:
        # Descriptor sets carry the derived json_name of every field; embedded descriptors do not.
        for message in _all_messages(f.message_type):
            for fld in message.field:
                fld.ClearField("json_name")
        files[Path(f.name).name] = f
    return files


def _all_messages(messages: object) -> list:
    out = []
    for message in messages:  # type: ignore[attr-defined]
        out.append(message)
        out.extend(_all_messages(message.nested_type))
    return out


def stale_files() -> list[str]:
    """Describe every committed module that does not match its ``.proto`` (empty when all are current)."""
    from google.protobuf import descriptor_pb2

    fresh = _fresh_descriptors()
    problems = []
    for proto in PROTOS:
        stem = proto.removesuffix(".proto")
        pb2 = PROTO_DIR / f"{stem}_pb2.py"
        grpc_file = PROTO_DIR / f"{stem}_pb2_grpc.py"
        expected = fresh[proto]
        if not pb2.exists() or not grpc_file.exists() or not (PROTO_DIR / f"{stem}_pb2.pyi").exists():
            problems.append(f"{stem}: generated modules are missing")
            continue
        # Importing the committed module by path would clash with an already imported copy in the default
        # descriptor pool, so read the serialized descriptor out of the file text instead.
        committed_text = pb2.read_text(encoding="utf-8")
        match = re.search(r"AddSerializedFile\((b'.*?')\)\n", committed_text, re.S)
        if match is None:
            problems.append(f"{pb2.name}: no serialized descriptor found")
            continue
        committed = descriptor_pb2.FileDescriptorProto.FromString(ast.literal_eval(match.group(1)))
        if committed != expected:
            problems.append(f"{pb2.name}: descriptor differs from {proto}")
        declared = {
            (f"{expected.package}.{svc.name}", m.name) for svc in expected.service for m in svc.method
        }
        named = set(_METHOD_PATH.findall(grpc_file.read_text(encoding="utf-8")))
        if named != declared:
            problems.append(f"{grpc_file.name}: RPCs differ from {proto}: {sorted(named ^ declared)}")
        for path in (pb2, grpc_file, PROTO_DIR / f"{stem}_pb2.pyi"):
            if not path.read_text(encoding="utf-8").startswith(HEADER):
                problems.append(f"{path.name}: missing the generated-file header")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Regenerate, or with ``--check`` report stale modules; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="only check that the committed modules are current"
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = stale_files()
        for line in problems:
            print(f"stale: {line}", file=sys.stderr)
        if problems:
            print("run: python scripts/gen_protos.py", file=sys.stderr)
            return 1
        print("protos: generated modules are current")
        return 0
    for path in generate():
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
