"""The repository's shape: pymilter is never shadowed, imports point down only."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

CORE = "mdcore"
COMPONENTS = {
    "lmtpd": REPO / "lmtpd",
    "pop3proxy": REPO / "pop3proxy",
    "mdmilter": REPO / "milter" / "mdmilter",
    "mdweb": REPO / "mdweb",
}
COMMAND = "mdmail"
OURS = {CORE, COMMAND, *COMPONENTS}


def run_python(code: str) -> "subprocess.CompletedProcess[str]":
    """Run code in a fresh interpreter from the repo root; its result, not raised."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )


def test_pymilter_imports_from_the_repo_root() -> None:
    """`import Milter` works with the repo root first on sys.path, as pytest runs."""
    code = "import Milter, milter; print(milter.__file__); print(Milter.CONTINUE)"
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    module_file = done.stdout.splitlines()[0]
    assert module_file.endswith(".so"), module_file


def test_pymilter_imports_in_this_test_process() -> None:
    """Within the test session itself, `milter` is pymilter's C module."""
    import Milter

    import milter

    assert milter.__file__ is not None and milter.__file__.endswith(".so")
    assert Milter.milter is milter


def test_no_module_of_ours_takes_pymilters_names() -> None:
    """No package or module named milter, Milter or mime can be imported from us."""
    for name in ("milter", "Milter", "mime"):
        assert not (REPO / name / "__init__.py").exists()
        assert not (REPO / f"{name}.py").exists()


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & OURS


def _package_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py")) if folder.is_dir() else []


def test_core_imports_no_component() -> None:
    """mdcore imports only itself."""
    for path in _package_files(REPO / CORE):
        assert _imports(path) <= {CORE}, path


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_components_import_only_the_core(component: str) -> None:
    """A component imports the core and itself, never another component or mdmail."""
    for path in _package_files(COMPONENTS[component]):
        assert _imports(path) <= {CORE, component}, path


# What `make demo` installs lacks the optional extras: the command must load
# without them, and say which extra a server needs only when it is started.
OPTIONAL = ("starlette", "uvicorn", "jinja2", "itsdangerous", "Milter", "milter")
BLOCK_OPTIONAL = f"""
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {OPTIONAL!r}:
            raise ImportError(f"{{name}} is not installed")
sys.meta_path.insert(0, Blocker())
"""


def test_the_command_loads_without_the_optional_extras() -> None:
    """mdmail --help and its parser work with no web or milter packages."""
    code = BLOCK_OPTIONAL + (
        "from mdmail.cli import build_parser\n"
        "build_parser()\n"
        "import mdmail.cli, sys\n"
        "sys.argv = ['mdmail', 'serve', 'web', '--help']\n"
        "mdmail.cli.main()\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert "--listen" in done.stdout
