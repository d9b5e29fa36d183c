"""The ``eraselab`` program (and ``python -m eraselab``): quiet the libraries before the verbs import them, then run
the command line."""

from eraselab.cli_support import quiet_libraries


def main() -> None:
    quiet_libraries()
    from eraselab.cli import app

    app()


if __name__ == "__main__":
    main()
