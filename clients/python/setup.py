"""Builds spare-client: generates the spare.v1 gRPC stubs from proto/ at build time.

The stubs are not committed: `build_py` runs grpcio-tools' protoc on the .proto files (the
repository's proto/proto, or the directory SPARE_PROTO_DIR names) and writes spare/v1/*_pb2.py,
*_pb2_grpc.py and *.pyi into the build, beside the hand-written package.
"""

import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
FILES = ["common", "job", "blob", "peer"]


def proto_dir() -> Path:
    given = os.environ.get("SPARE_PROTO_DIR")
    candidates = [Path(given)] if given else [HERE / "proto", HERE.parent.parent / "proto" / "proto"]
    for d in candidates:
        if (d / "spare" / "v1" / "job.proto").is_file():
            return d
    raise SystemExit(
        "spare-client: no spare/v1/*.proto found in "
        + ", ".join(str(d) for d in candidates)
        + "; build from the Spare repository (pip install clients/python) or set SPARE_PROTO_DIR"
    )


class BuildWithStubs(build_py):
    """build_py, then protoc into the build directory."""

    def run(self):
        super().run()
        from grpc_tools import protoc  # a build requirement (pyproject.toml)
        import grpc_tools

        src = proto_dir()
        out = Path(self.build_lib)
        include = Path(grpc_tools.__file__).parent / "_proto"
        args = [
            "grpc_tools.protoc",
            f"-I{src}",
            f"-I{include}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
        ] + [str(src / "spare" / "v1" / f"{f}.proto") for f in FILES]
        if protoc.main(args) != 0:
            raise SystemExit(f"spare-client: protoc failed on {src}")
        (out / "spare" / "v1" / "__init__.py").write_text('"""spare.v1 messages and stubs, generated from proto/."""\n')


setup(cmdclass={"build_py": BuildWithStubs})
