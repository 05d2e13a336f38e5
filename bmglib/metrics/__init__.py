"""Metrics: bootstrap (the one resampling and percentile-CI implementation), fairness
(group-disaggregated, bootstrap CIs), adherence (FST, lesion), image (FID/KID per
FST at equal N, memorisation)."""
