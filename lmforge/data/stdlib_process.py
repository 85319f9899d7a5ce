"""A fresh interpreter that sees only the standard library, with a fixed hash seed and a fixed environment.

What pydoc renders and what `inspect` reads from a live module are facts about the process that looks, not only
about the Python installation: the modules already imported decide which names pydoc links and which classes it
lists, monkeypatches (torch replaces `inspect.getfile`) change what a name points to, sets print in the order of
their strings' hashes (random per process unless PYTHONHASHSEED is fixed), `os.environ` and `sys.argv` are printed
as module data, and mutable defaults show what the process did with them (`logging.shutdown`'s handler list).
Reading them in a fresh interpreter made the same way every time makes the result a function of the installation
alone. `python -I` is not enough: it ignores PYTHONHASHSEED; so the environment is replaced instead, and a
bootstrap drops the current folder from `sys.path` before anything is imported.

Nor may the result depend on where lmforge was installed: the `sys` page prints `sys.executable` and the `__main__`
module's file, and `platform.architecture`'s signature shows `executable=sys.executable`. Three clones of one
commit in three folders archived those pages with their own paths, tokenized them into different shards, and
trained different models from step 70 on. So the interpreter is the installation's own (the virtual
environment's `python` resolved to the file it links to), and the script runs as `__main__` under its file name
alone, with no folder in `sys.argv` or `sys.orig_argv`. The `sys` page also prints `sys.path_importer_cache`, where
the first import of `-c`'s '' entry left a finder for the current folder (CI's checkout showed it, shorter paths hid
it in the repr's ellipsis): the child runs in the root folder, and the bootstrap drops that finder.

Used by the embedded pydoc site (`pydoc_site.py`) and the default SFT data's documentation facts.
"""

from __future__ import annotations

import os
import sys

# `-c` puts '' (the current folder) first on sys.path; drop it and the finder cached for it, then run the script as
# __main__, named by its file name alone, with its own arguments.
_BOOTSTRAP = ("import os, sys; del sys.path[0]; import types; sys.path_importer_cache.pop(os.getcwd(), None); "
              "path = sys.argv[1]; name = os.path.basename(path); "
              "sys.argv = [name, *sys.argv[2:]]; sys.orig_argv = ['python', *sys.argv]; "
              "main = types.ModuleType('__main__'); main.__file__ = name; sys.modules['__main__'] = main; "
              "exec(compile(open(path, encoding='utf-8').read(), name, 'exec'), main.__dict__)")
# The whole environment of the child: the hash seed fixed (any value would do), nothing of the caller's shell.
STDLIB_ENV = {"PYTHONHASHSEED": "0"}
# Its working folder: the same wherever the caller stands (`os.getcwd()` must not reach a page).
STDLIB_CWD = os.path.abspath(os.sep)


def stdlib_python(script: str, *args: str) -> list[str]:
    """The command that runs `script` (a file that needs only the standard library) in a fresh interpreter: no
    site-packages (-S), no user site (-s), UTF-8 I/O whatever the locale (-X utf8). Run it with `env=STDLIB_ENV` and
    `cwd=STDLIB_CWD`."""
    return [os.path.realpath(sys.executable), "-s", "-S", "-X", "utf8", "-c", _BOOTSTRAP, os.path.abspath(script),
            *args]
