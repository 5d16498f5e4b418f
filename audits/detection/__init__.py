"""The detection stage's parts: reference geometry, the nulls and the directional evidence,
the detector contract and registry, thresholds, Sybil groups, incidents."""
