"""The shipped .wasm is what the pinned toolchain builds from wasm/assembly."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from extproc.deploy.wasm_config import wasm_module

REPO = Path(__file__).resolve().parents[2]


def test_rebuilt_module_matches_the_shipped_bytes(tmp_path: Path) -> None:
    assert shutil.which("npm") is not None, "npm is needed to rebuild the filter (Node 20)"
    out = tmp_path / "llm_extproc.wasm"
    subprocess.run(["bash", str(REPO / "wasm" / "build.sh"), str(out)], check=True, timeout=300)
    assert out.read_bytes() == wasm_module().read_bytes(), "run wasm/build.sh and commit the result"


def test_toolchain_is_pinned_exactly() -> None:
    import json

    lock = json.loads((REPO / "wasm" / "package-lock.json").read_text())
    package = json.loads((REPO / "wasm" / "package.json").read_text())
    assert package["devDependencies"]["assemblyscript"] == "0.27.37"
    assert lock["packages"]["node_modules/assemblyscript"]["version"] == "0.27.37"
