"""The layers stay as docs/architecture.md draws them: import-linter's contracts (pyproject.toml) hold."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")


def _lint(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LINT_IMPORTS, "--no-cache", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_every_layer_contract_is_kept() -> None:
    done = _lint()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout, done.stdout


def test_a_broken_contract_is_reported(tmp_path: Path) -> None:
    """The check reads the real imports: a contract the code breaks (the API server uses the floor) fails."""
    config = tmp_path / "broken.toml"
    config.write_text('[tool.importlinter]\nroot_packages = ["server", "smlocal"]\n\n'
                      '[[tool.importlinter.contracts]]\nname = "server never imports the floor"\n'
                      'type = "forbidden"\nsource_modules = ["server"]\nforbidden_modules = ["smlocal.core"]\n')
    done = _lint("--config", str(config))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "server never imports the floor BROKEN" in done.stdout, done.stdout
