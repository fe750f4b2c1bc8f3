"""pyproject.toml ships every bundled file (``pip install .`` must carry the bundled models)."""
import fnmatch
import subprocess
import tomllib
from pathlib import PurePosixPath

from tests.conftest import REPO


def package_data_patterns() -> list[str]:
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())
    return cfg["tool"]["setuptools"]["package-data"]["h_model.bundled"]


def shipped(path: str, pattern: str) -> bool:
    """As setuptools globs: each ``*`` stays within one path part."""
    a, b = PurePosixPath(path).parts, PurePosixPath(pattern).parts
    return len(a) == len(b) and all(fnmatch.fnmatchcase(x, y) for x, y in zip(a, b))


def bundled_files() -> list[str]:
    """The files under h_model/bundled that git tracks (outside a checkout: all but caches)."""
    try:
        tracked = subprocess.run(["git", "ls-files", "h_model/bundled"], capture_output=True, text=True, cwd=REPO,
                                 check=True).stdout.split()
        return [f.removeprefix("h_model/bundled/") for f in tracked]
    except (OSError, subprocess.CalledProcessError):
        root = REPO / "h_model" / "bundled"
        return [f.relative_to(root).as_posix() for f in root.rglob("*")
                if f.is_file() and "__pycache__" not in f.parts]


def test_package_data_covers_every_bundled_file() -> None:
    patterns = package_data_patterns()
    data = [f for f in bundled_files() if not f.endswith(".py")]
    assert {"omniglot_proto_resnet12/model.safetensors", "omniglot_proto_resnet12/config.json"} <= set(data)
    left_out = [f for f in data if not any(shipped(f, p) for p in patterns)]
    assert left_out == [], f"add patterns for these to [tool.setuptools.package-data]: {left_out}"


def test_a_pattern_that_misses_a_file_is_noticed() -> None:
    """The check itself: a bundle member no pattern names is reported."""
    patterns = package_data_patterns()
    assert not any(shipped("omniglot_proto_resnet12/weights.unlisted-suffix", p) for p in patterns)
    assert not any(shipped("faces_default/extra/config.json", p) for p in patterns)  # one level only
    assert any(shipped("faces_default/LICENSE", p) for p in patterns)
