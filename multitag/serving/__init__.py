"""The FastAPI service and web page: predictions from the registry's champion, corrections
into the feedback queue."""
