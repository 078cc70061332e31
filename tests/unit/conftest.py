"""Make plugin code importable without Ansible's plugin loader.

Only module_utils and filter directories go on sys.path: plugins/modules has a
postfix_queue.py of its own that must not shadow module_utils/postfix_queue.py.
"""

import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "postfix"
for sub in ("plugins/module_utils", "plugins/filter"):
    path = str(ROOT / sub)
    if path not in sys.path:
        sys.path.insert(0, path)

# When the fixtures were captured (container clock), for stable ages.
CAPTURED_AT = 1795899751


def install_spool(src: Path, dst: Path) -> Path:
    """Copy a captured queue tree and restore the modes git does not keep."""
    shutil.copytree(src, dst)
    for queue in ("maildrop", "incoming", "active", "deferred", "hold", "corrupt", "defer"):
        (dst / queue).mkdir(exist_ok=True)
    for path in dst.rglob("*"):
        if path.is_dir():
            path.chmod(0o700)
            continue
        queue = path.relative_to(dst).parts[0]
        path.chmod({"maildrop": 0o744, "defer": 0o600}.get(queue, 0o700))
    return dst


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    """A writable copy of the depth-1 fixture queue (hash_queue_depth = 1)."""
    return install_spool(FIXTURES / "spool-depth1", tmp_path / "spool")


def file_mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)
