"""``Annotated`` dependency aliases used by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from pixelmill.services import Services
from pixelmill.settings import Settings


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_settings(request: Request) -> Settings:
    return request.app.state.services.settings


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def public_base_url(request: Request) -> str:
    """Base URL clients reach us at: the configured one, else from the request."""
    configured = request.app.state.services.settings.public_url
    return (configured or str(request.base_url)).rstrip("/")


BaseUrlDep = Annotated[str, Depends(public_base_url)]
