"""The one error base class of unigap.

Every error that unigap raises on purpose (bad input, a file that does not fit,
a configuration that cannot work) derives from :class:`UnigapError`; its message
names the item (file, line, row, key).  The CLI prints such an error as one
line; anything else (a bug, a torch shape error) keeps its traceback.

``UnigapError`` subclasses ``ValueError`` so that code written against the
earlier releases (which raised ``ValueError``) keeps catching it.
"""

from __future__ import annotations


class UnigapError(ValueError):
    """A problem with the user's input, files or configuration; the message names the item."""
