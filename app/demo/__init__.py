"""``jobtrail demo``: a simulated Cloud and node fleet driving the real tracker."""
