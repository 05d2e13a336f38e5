"""bmglib: fairness-aware synthetic skin-lesion data (BiasMitigateGAN) and its audit.

One module per concept; see ../shared/DESIGN.md (mirrored in README.md) for the map.
"""

__version__ = "0.1.0"
