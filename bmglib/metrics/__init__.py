"""Metrics: fairness (group-disaggregated, bootstrap CIs), adherence (FST, lesion), image (FID/KID per
FST at equal N, memorisation)."""
