"""Commands a user can paste into a shell: the one rule for quoting a path in a printed or saved command line."""

from __future__ import annotations

import shlex
from pathlib import Path


def shell_word(path: str | Path) -> str:
    """``path`` as one word of a command a user can paste into a shell (the ``next:`` lines, tune.json's
    ``train_command``): quoted (``shlex.quote``) when it holds spaces, quotes or other shell characters, and with
    ``./`` in front when it is relative and starts with ``-`` (``-run1/final.pt`` -> ``./-run1/final.pt``; the
    command would take it for an option: 'No such option: -r'). A name that is no path ('elpv') and starts with no
    ``-`` is left as it is."""
    text = str(path)
    return shlex.quote("./" + text if text.startswith("-") else text)
