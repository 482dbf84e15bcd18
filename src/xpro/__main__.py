"""``python -m xpro``: the ``xpro`` command."""

from xpro.cli import main

if __name__ == "__main__":
    main()
