"""Users' corrected labels: the durable queue and how the nightly run turns it into data."""
