"""The console's routes: the page at ``/``, its files under ``/console/``, and the fleet JSON.

The page and its files are public: they hold no data. Everything the page shows comes from the
API, under the same key as every other /v1 route (the Admission middleware and the route's own
dependency): ``GET /v1/console/fleet``. With ``--no-console`` none of these routes exists.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.params import Depends as DependsParam
from starlette.exceptions import HTTPException
from starlette.responses import Response

from llamagrid.gateway.console.activity import Activity
from llamagrid.gateway.console.assets import INDEX, load_assets
from llamagrid.gateway.console.schemas import Fleet
from llamagrid.gateway.console.service import fleet
from llamagrid.gateway.dispatch import Dispatcher
from llamagrid.gateway.openai.router import ERROR_RESPONSES

#: Where the page's own files are served.
ASSET_PREFIX = "/console"

router = APIRouter(prefix="/v1/console", tags=["console"], responses=ERROR_RESPONSES)


@router.get("/fleet")
async def get_fleet(request: Request) -> Fleet:
    """The fleet as this gateway sees it: each worker's health, breaker, slots, queue, KV use
    and cached-token ratio, the recent requests (where each went, and why), and the last ten
    minutes of traffic in 5-second intervals. The console polls it every second or two."""
    dispatcher = request.app.state.dispatcher
    activity = request.app.state.activity
    assert isinstance(dispatcher, Dispatcher) and isinstance(activity, Activity)
    return fleet(dispatcher.pool, activity)


def install_console(app: FastAPI, dependencies: list[DependsParam]) -> Activity:
    """Serve the console on ``app``: its page, its files and its fleet endpoint (behind
    ``dependencies``, the API key check). Returns the activity the middleware records into."""
    assets = load_assets()
    activity = Activity()
    app.state.activity = activity
    app.include_router(router, dependencies=dependencies)

    @app.get("/", include_in_schema=False)
    async def console_page(request: Request) -> Response:
        """The console."""
        return assets[INDEX].response(request)

    @app.get(ASSET_PREFIX + "/{name}", include_in_schema=False)
    async def console_asset(name: str, request: Request) -> Response:
        """One of the console's files, by its exact name."""
        asset = assets.get(name)
        if asset is None or name == INDEX:
            raise HTTPException(404, "Not Found")
        return asset.response(request)

    return activity
