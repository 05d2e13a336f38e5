"""A blinded reader study: dermatologists rate the realism of real and synthetic images.

One module per step::

    design    which images, copied how (opaque ids, re-encoded, one display size), in which order
    store     the SQLite answers database (one transaction per answer)
    app       the web app: a reader page per personal link, an admin page, the CSV export
    simulate  simulated readers with a known per-image quality signal (CI, and the tests)
    analysis  realism, share ≥ 4, real-vs-synthetic ROC AUC, Krippendorff's α, lesion accuracy

Command line: ``python -m bmglib.readerstudy create|serve|add-reader|status|export`` (see
``--help``), or ``make reader-study STUDY=name``.
"""
