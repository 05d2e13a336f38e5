"""``python -m bmglib.release --variant bmg --profile quick [--out DIR]``."""

from bmglib.release.build import main

main()
