"""Build hook: generates the gRPC stubs of nexuskv.v1 from the repository's proto/ at build time.

The stubs are never committed. `build_py` runs grpcio-tools' protoc on
../../proto/nexuskv/v1/kv_memory.proto (or $NEXUSKV_PROTO_DIR/nexuskv/v1/kv_memory.proto) and writes
kv_memory_pb2.py, kv_memory_pb2.pyi and kv_memory_pb2_grpc.py into the package `nexuskv._proto`,
rewriting the generated absolute import so the package imports as `nexuskv._proto.kv_memory_pb2`.

The runtime floors of grpcio and protobuf follow the grpcio-tools that generated the stubs: generated
code refuses to import under an older runtime, so the wheel says so up front.
"""

from __future__ import annotations

import os
import re
import tempfile
from importlib import metadata
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PROTO_REL = Path("nexuskv") / "v1" / "kv_memory.proto"


def _proto_root() -> Path:
    candidates = []
    if os.environ.get("NEXUSKV_PROTO_DIR"):
        candidates.append(Path(os.environ["NEXUSKV_PROTO_DIR"]))
    candidates.append(HERE.parent.parent / "proto")
    for root in candidates:
        if (root / PROTO_REL).is_file():
            return root
    raise RuntimeError(
        f"cannot find {PROTO_REL} under {[str(c) for c in candidates]}: build the nexuskv client from "
        "a nexuskv checkout (pip install ./clients/python) or set NEXUSKV_PROTO_DIR to its proto/ folder"
    )


def _generate(out_pkg_dir: Path) -> None:
    from grpc_tools import protoc  # build requirement

    root = _proto_root()
    include = Path(protoc.__file__).resolve().parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{root}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            str(root / PROTO_REL),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {root / PROTO_REL}")
        gen = Path(tmp) / "nexuskv" / "v1"
        out_pkg_dir.mkdir(parents=True, exist_ok=True)
        for name in ("kv_memory_pb2.py", "kv_memory_pb2.pyi", "kv_memory_pb2_grpc.py"):
            text = (gen / name).read_text()
            # protoc writes `from nexuskv.v1 import kv_memory_pb2 as ...`; the stubs live in
            # nexuskv._proto, so make that import relative.
            text = re.sub(r"^from nexuskv\.v1 import ", "from . import ", text, flags=re.M)
            (out_pkg_dir / name).write_text(text)
    init = out_pkg_dir / "__init__.py"
    init.write_text('"""Generated gRPC stubs of nexuskv.v1 (built from proto/; never edited)."""\n')


class BuildPyWithStubs(build_py):
    """build_py that first generates nexuskv._proto from proto/."""

    def run(self) -> None:
        # Generate into the source tree's package folder only when building from a checkout for an
        # editable install; otherwise straight into build_lib so the source tree stays clean.
        target = Path(self.build_lib) / "nexuskv" / "_proto"
        _generate(target)
        if self.editable_mode:
            _generate(HERE / "src" / "nexuskv" / "_proto")
        super().run()


def _runtime_requirements() -> list[str]:
    try:
        tools = metadata.version("grpcio-tools")
    except metadata.PackageNotFoundError:
        return ["grpcio>=1.60,<2", "protobuf>=5.26,<7", "numpy>=1.26"]
    proto_req = next(
        (r for r in metadata.requires("grpcio-tools") or [] if r.startswith("protobuf")),
        "protobuf<7",
    )
    proto_req = proto_req.replace(" ", "")
    return [f"grpcio>={tools},<2", proto_req, "numpy>=1.26"]


setup(cmdclass={"build_py": BuildPyWithStubs}, install_requires=_runtime_requirements())
