"""``jobtrail bench``: Jobtrail's figures as ratios to baselines measured in the same run."""
