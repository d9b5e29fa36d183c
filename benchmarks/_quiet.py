"""Imported first by every benchmark, for its side effect: the libraries' chatter is quieted as the ``eraselab``
program quiets it (``eraselab.__main__``), before the benchmark's own imports load diffusers and transformers."""

from eraselab.cli_support import quiet_libraries

quiet_libraries()
