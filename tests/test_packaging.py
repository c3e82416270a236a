"""What the package declares: one version, the dependencies it imports, uvloop as an extra."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from packaging.requirements import Requirement

import llmstreams

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "llmstreams"
# The optional parts of the package, with the extra that installs what they import.
EXTRA_OF_SUBPACKAGE = {"ray": "ray"}
# Modules only their host program loads, and what that host brings (the pytest11 entry point).
HOST_OF_MODULE = {"mock/pytest_plugin.py": {"pytest"}}


def run(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *arguments], capture_output=True, text=True, timeout=120, cwd=ROOT,
        check=False,
    )


def requirements(extra: str | None, distribution: str = "llmstreams") -> set[str]:
    """Distribution names (normalized) `distribution` requires with `extra` (None: without any),
    with what the extras of those requirements bring (`ray[data]` brings pyarrow)."""
    found = set()
    for line in importlib.metadata.requires(distribution) or ():
        requirement = Requirement(line)
        marker = requirement.marker
        in_extra = marker is not None and "extra" in str(marker)
        wanted = marker is not None and marker.evaluate({"extra": extra}) if in_extra else not extra
        if wanted:
            found.add(_normalized(requirement.name))
            for their_extra in requirement.extras:
                found |= requirements(their_extra, requirement.name)
    return found


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_imports(tree: ast.Module, *, top_level_only: bool) -> set[str]:
    """Top-level names of the modules `tree` imports, other than the standard library's and ours."""
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names - set(sys.stdlib_module_names) - {"llmstreams", "__future__"}


@functools.cache
def _distributions_by_module() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distributions(module_names: set[str]) -> set[str]:
    by_module = _distributions_by_module()
    return {_normalized(dist) for name in module_names for dist in by_module[name]}


def test_version_has_one_source_read_by_the_metadata_and_the_command() -> None:
    # setup.cfg reads the version from llmstreams.__version__; a stale editable install
    # (installed before the version changed) fails here until reinstalled.
    assert importlib.metadata.version("llmstreams") == llmstreams.__version__
    result = run("-m", "llmstreams", "--version")
    assert result.stdout == f"llmstreams {llmstreams.__version__}\n"


def test_the_license_file_is_the_one_the_metadata_names() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 the llmstreams authors" in text
    assert importlib.metadata.metadata("llmstreams")["License"] == "MIT"


def test_every_module_level_import_is_a_declared_dependency() -> None:
    core = requirements(None)
    for path in sorted(PACKAGE.rglob("*.py")):
        subpackage = path.relative_to(PACKAGE).parts[0]
        extra = EXTRA_OF_SUBPACKAGE.get(subpackage)
        declared = core | requirements(extra) if extra else core
        imported = third_party_imports(ast.parse(path.read_text(encoding="utf-8")), top_level_only=True)
        imported -= HOST_OF_MODULE.get(path.relative_to(PACKAGE).as_posix(), set())
        missing = distributions(imported) - declared
        assert not missing, f"{path.relative_to(ROOT)} imports {sorted(missing)}, not in install_requires"


def test_bench_and_test_only_packages_are_extras_the_package_never_imports() -> None:
    core = requirements(None)
    for extra_only in ("uvloop", "aiohttp-sse-client2"):
        assert extra_only not in core
        assert extra_only in requirements("bench")
        assert extra_only in requirements("test")
    for path in PACKAGE.rglob("*.py"):
        imported = third_party_imports(ast.parse(path.read_text(encoding="utf-8")), top_level_only=False)
        assert "aiohttp_sse_client2" not in imported, path


SMALL_BENCH = (
    "bench", "--mock-workers", "0", "--concurrency", "1", "--requests", "2", "--warmup", "0",
    "--answer-chars", "24", "--chunk-chars", "12",
)
# Runs the command with `import uvloop` failing, as where it is not installed.
WITHOUT_UVLOOP = (
    "import sys; sys.modules['uvloop'] = None; "
    "from llmstreams.cli import main; sys.exit(main(sys.argv[1:]))"
)


def test_bench_without_uvloop_says_once_how_to_install_it() -> None:
    result = run("-c", WITHOUT_UVLOOP, *SMALL_BENCH)
    assert result.returncode == 0, result.stderr
    notices = [line for line in result.stderr.splitlines() if "uvloop" in line]
    assert notices == [
        "llmstreams bench: uvloop is not installed, so the client runs on asyncio's loop "
        "(events wait longer to be timed): pip install 'llmstreams[bench]'"
    ]
    assert "; on asyncio" in result.stdout


def test_bench_with_uvloop_says_nothing_of_it() -> None:
    result = run("-m", "llmstreams", *SMALL_BENCH)
    assert result.returncode == 0, result.stderr
    assert "uvloop" not in result.stderr
    assert "; on uvloop" in result.stdout
