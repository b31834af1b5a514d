"""The llamagrid console: a chat playground and a live view of the fleet, served at ``/``.

``router.py`` serves the static page (``static/``: HTML, JavaScript modules and CSS, no build
step, nothing fetched from elsewhere) and the one JSON endpoint it reads the fleet from,
``GET /v1/console/fleet``; ``activity.py`` keeps the recent requests and the per-second series
the fleet view charts; ``fleet.py`` turns the pool and the activity into that endpoint's answer.
"""
