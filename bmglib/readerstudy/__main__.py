"""``python -m bmglib.readerstudy ...`` (see :mod:`bmglib.readerstudy.cli`)."""

from bmglib.readerstudy.cli import main

main()
