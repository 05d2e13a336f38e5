"""Metrics: fairness (group-disaggregated, with bootstrap CIs); image metrics arrive later."""
