"""``python -m xfer``: the ``xfer`` command line (see :mod:`xfer.cli`)."""

from xfer.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
