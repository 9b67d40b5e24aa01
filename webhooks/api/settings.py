"""REST resource /api/settings: the settings in force, and writing them (secrets sealed in the database)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bot.credentials import SETTING_SECRETS
from bot.services import Services
from bot.settings import SettingsError
from bot.settings_write import check_secret_setting, config_target, write_config
from webhooks.api.common import read_json
from webhooks.keys import SERVICES


async def get_settings(request: web.Request) -> web.Response:
    """The settings in force (the config file re-read if it changed), secrets masked."""
    services: Services = request.app[SERVICES]
    services.settings.refresh(min_interval=0)
    return web.json_response(await _settings_body(services))


async def _settings_body(services: Services) -> dict[str, Any]:
    """The settings as the API shows them: a secret stored sealed in the database shows as set there."""
    settings = services.settings
    shown = settings.public()
    for name, owner in SETTING_SECRETS.items():
        if not settings.locked(name) and await services.credentials.kinds(owner):
            shown[name] |= {"value": "********", "source": "database"}
    return {"configFile": str(settings.config_path) if settings.config_path else None,
            "settings": shown, "restartRequired": sorted(settings.restart_pending)}


async def put_settings(request: web.Request) -> web.Response:
    """Write keys to the config file (keeping its format and comments) and apply them at once where
    that is safe; a secret goes sealed into the database, never into the file. Locked keys are refused
    with 409, invalid values with 400, and then nothing is written."""
    services: Services = request.app[SERVICES]
    body = await read_json(request)
    if not isinstance(body, dict) or not body:
        return web.json_response({"error": "send an object of setting names and values"}, status=400)
    settings = services.settings
    secrets = {name: body.pop(name) for name in list(body) if name in SETTING_SECRETS}
    path = config_target(settings)
    try:
        for name, value in secrets.items():
            check_secret_setting(settings, name, value)
        fresh = write_config(path, body, settings, env=settings.env) if body else None
    except SettingsError as exc:
        return web.json_response({"error": str(exc), "key": exc.key}, status=409 if "locked" in str(exc) else 400)
    for name, value in secrets.items():
        if value in (None, ""):
            await services.credentials.delete(SETTING_SECRETS[name])
        else:
            await services.credentials.put(SETTING_SECRETS[name], "api_key", str(value))
    if fresh is not None:
        settings.apply(fresh)
    return web.json_response(await _settings_body(services))
