"""The chat page at GET / and the live status view: static files in static/, served by routes.py."""
