"""Share a synthetic set and its generator the way the field does (issue 17).

    python -m bmglib.release --variant bmg --profile quick      # or: make release VARIANT=bmg

writes ``paths.release_dir(profile, variant)``:

* ``dataset/`` — a Hugging Face ``imagefolder``: ``train/`` (the augmentation set of notebook 03)
  and ``test/`` (its balanced evaluation set), each PNGs + ``metadata.csv``; ``README.md``, the
  dataset card with the Hub's YAML header that doubles as a datasheet (how it was made,
  composition, per-FST fidelity, adherence and memorisation, licence, uses, limits); and
  ``provenance.json``. ``datasets.load_dataset("imagefolder", data_dir=".../dataset")`` loads it.
* ``generator/`` — the trained variant in diffusers' ``save_pretrained`` layout with its model
  card; :func:`load_generator` rebuilds it from that folder alone.

Modules: :mod:`~bmglib.release.sets` (inputs, checked), :mod:`~bmglib.release.evidence` (the
numbers), :mod:`~bmglib.release.card` (the two cards), :mod:`~bmglib.release.generator`
(export and load), :mod:`~bmglib.release.build` (the atomic write and the CLI).
"""

from bmglib.release.build import make_release
from bmglib.release.generator import Generator, load_generator

__all__ = ["Generator", "load_generator", "make_release"]
