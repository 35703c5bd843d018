"""What routes reach through the app: the data plane and friends, set by create_app."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request

if TYPE_CHECKING:
    from modelport.dataplane import DataPlane


def dataplane(request: Request) -> DataPlane:
    dp: DataPlane = request.app.state.dataplane
    return dp
