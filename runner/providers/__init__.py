"""Sandbox providers (SANDBOX_PROVIDER): the one interface of runner.providers.base, one module each."""

from __future__ import annotations

from collections.abc import Callable

from bot.settings import PROVIDER_NEEDS, Settings
from runner.providers.base import Provider, ProviderUnavailable, RemoteSandbox, missing_settings, remote
from runner.providers.local import LocalProvider


def _docker(settings: Settings) -> Provider:
    from runner.providers.docker import DockerProvider  # the docker SDK is imported only when used

    return DockerProvider(settings)


def _e2b(settings: Settings) -> Provider:
    from runner.providers.e2b import E2BProvider  # the e2b SDK is imported only when used

    return E2BProvider(settings)


def _daytona(settings: Settings) -> Provider:
    from runner.providers.daytona import DaytonaProvider  # the daytona SDK is imported only when used

    return DaytonaProvider(settings)


def _vercel(settings: Settings) -> Provider:
    from runner.providers.vercel import VercelProvider  # the vercel SDK is imported only when used

    return VercelProvider(settings)


FACTORIES: dict[str, Callable[[Settings], Provider]] = {"local": LocalProvider, "docker": _docker, "e2b": _e2b,
                                                        "daytona": _daytona, "vercel": _vercel}


def provider_for(settings: Settings) -> Provider:
    """The provider SANDBOX_PROVIDER names, refused (ProviderUnavailable) when a setting it needs is unset."""
    name = str(settings.SANDBOX_PROVIDER or "local").lower()
    factory = FACTORIES.get(name)
    if factory is None:
        raise ProviderUnavailable(f"SANDBOX_PROVIDER {name!r} is not a provider: use one of {', '.join(FACTORIES)}")
    missing = missing_settings(settings, PROVIDER_NEEDS.get(name, ()))
    if missing:
        raise ProviderUnavailable(f"the {name} sandbox provider needs {', '.join(missing)}, which is not set: "
                                  "set it, or SANDBOX_PROVIDER back to local")
    return factory(settings)


__all__ = ["FACTORIES", "Provider", "ProviderUnavailable", "RemoteSandbox", "provider_for", "remote"]
