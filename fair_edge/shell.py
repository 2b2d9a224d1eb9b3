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


def dataset_words(data: str | Path, category: str | None = None) -> str:
    """The words of a command that pick a dataset as the user gave it: ``data`` as one word (``shell_word``), then
    ``--category CATEGORY`` when a product was picked inside an MVTec root or a VisA CSV (``shlex.quote``d: a
    category is a name, not a path, so it gets no ``./``; the command takes the word after --category as its value
    even when it starts with ``-``). Every printed ``next:`` command and tune.json's ``train_command`` hand the data
    on with it: without --category the next command reads the whole root, which is refused ('pick one with
    --category')."""
    words = shell_word(data)
    return words if category is None else f"{words} --category {shlex.quote(category)}"
