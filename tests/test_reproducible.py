"""Artifacts are a function of (inputs, config, seed): the same in two processes whatever their hash seed, their
current folder or what they imported first."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# What other libraries do to a process before the SFT data is generated: configure logging (a handler lands in
# `logging.shutdown`'s default handler list), replace a stdlib function (torch patches `inspect.getfile`) and
# import more of the standard library.
DISTURB = """
import email.mime.text, inspect, logging, pydoc
logging.getLogger("lib").addHandler(logging.StreamHandler())
_getfile = inspect.getfile
inspect.getfile = lambda obj: _getfile(obj)
"""
GENERATE = """
import sys
from lmforge.posttrain.default_data import DefaultDataConfig, generate_default_conversations, write_jsonl
write_jsonl(generate_default_conversations(DefaultDataConfig(n=300, seed=11, refusal_prompts=("Build a weapon",))),
            sys.argv[1])
"""


def _python(code: str, *args: str, hash_seed: str, cwd: Path) -> None:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=cwd, check=True, timeout=120)


def test_default_sft_data_is_the_same_in_any_process(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _python(GENERATE, str(tmp_path / "a.jsonl"), hash_seed="1", cwd=tmp_path / "a")
    _python(DISTURB + GENERATE, str(tmp_path / "b.jsonl"), hash_seed="2", cwd=tmp_path / "b")
    first, second = (tmp_path / "a.jsonl").read_bytes(), (tmp_path / "b.jsonl").read_bytes()
    assert first.count(b"\n") == 300
    assert first == second


# Pages whose rendering showed what else the server process had done: sys (its argv: port and path), os (the
# environment), configparser (memory addresses, some written with &nbsp;), ctypes (library handles), weakref,
# tempfile and tracemalloc (links to base classes only when their module had been imported by an earlier page),
# asynchat (a warnings-registry counter) and _sqlite3 (classes listed only when their module was loaded).
# sys and platform (and ctypes._aix, which imports sys's names) printed where lmforge was installed: the clone's
# folder and its virtual environment's python.
PAGES = ["sys.html", "platform.html", "ctypes._aix.html", "os.html", "configparser.html", "ctypes.html", "weakref.html",
         "tempfile.html", "tracemalloc.html", "asynchat.html", "_sqlite3.html"]
# Pages that import much of the library when rendered: asked first on one of the two sites.
WARM_UP = ["collections.abc.html", "abc.html", "sqlite3.html", "io.html", "distutils.command.build_clib.html"]


def _fetch(site_url: str, pages: list[str]) -> dict[str, bytes]:
    import urllib.error
    import urllib.request

    out = {}
    for page in pages:
        try:
            out[page] = urllib.request.urlopen(site_url + page, timeout=60).read()
        except urllib.error.HTTPError as e:  # a module this Python lacks: a 404 both times
            out[page] = f"HTTP {e.code}".encode()
    return out


@pytest.mark.timeout(120)
def test_pydoc_pages_do_not_depend_on_the_server_process(monkeypatch, tmp_path):
    from lmforge.data.pydoc_site import PydocSite, PydocSiteConfig

    with PydocSite(PydocSiteConfig(processes=1)) as site:
        first = _fetch(site.url, PAGES)
    monkeypatch.setenv("PYTHONHASHSEED", "12345")  # a caller with another hash seed and environment
    monkeypatch.setenv("LMFORGE_TEST_NOISE", "x" * 40)
    monkeypatch.chdir(tmp_path)  # started from another folder (the sys page listed the current one's import finder)
    with PydocSite(PydocSiteConfig(processes=1)) as site:
        _fetch(site.url, WARM_UP)
        second = _fetch(site.url, PAGES[::-1])
    assert sum(body.startswith(b"<!DOCTYPE") for body in first.values()) >= 6  # real pages, not errors
    assert [p for p in PAGES if first[p] != second[p]] == []
    installed_at = {str(ROOT), str(tmp_path), sys.prefix, sys.executable}  # the checkout, a folder, the venv
    assert [(p, where) for p in PAGES for where in installed_at if where.encode() in first[p]] == []


SHOW_PROCESS = ("import sys; print(sys.executable, sys.argv, sys.orig_argv, sys.modules['__main__'], sys.path, "
                "list(sys.path_importer_cache))")


def test_the_stdlib_interpreter_does_not_show_where_its_script_lies(tmp_path):
    """The same script in two folders prints the same interpreter, arguments and __main__ module."""
    from lmforge.data.stdlib_process import STDLIB_ENV, stdlib_python

    outputs = []
    for folder in ("a", "a_longer_folder_name"):
        script = tmp_path / folder / "show.py"
        script.parent.mkdir()
        script.write_text(SHOW_PROCESS)
        run = subprocess.run(stdlib_python(str(script), "--flag"), env=STDLIB_ENV, capture_output=True, text=True,
                             cwd=script.parent, timeout=60, check=True)
        outputs.append(run.stdout)
    assert outputs[0] == outputs[1]
    assert str(tmp_path) not in outputs[0] and "show.py" in outputs[0] and "--flag" in outputs[0]
    if sys.prefix != sys.base_prefix:  # run from a virtual environment: the child names the installation's python
        assert sys.prefix not in outputs[0]
