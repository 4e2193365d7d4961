"""``forestream models shadow``: announce (or stop) a candidate every worker scores beside the
served version, its predictions going to the shadow topic only.

The announcement is a :class:`~forestream.wire.messages.ShadowEvent` under the key
``<name>/shadow`` of the compacted models topic, so a worker starting later finds it like the
served version. It changes nothing that is served, so unlike ``promote`` it takes no store lock
and records no history: the newest announcement wins.
"""

from __future__ import annotations

import time
from typing import Annotated

import typer

from forestream.errors import UserError
from forestream.registry.signing import TrustSettings
from forestream.runtime.cli_options import (
    AllowUnsignedOpt,
    BootstrapOpt,
    ModelNameOpt,
    ModelsTopicOpt,
    StoreOpt,
    VerifyKeyOpt,
)
from forestream.runtime.settings import CommonSettings, load_settings
from forestream.wire.messages import ServingRef, ShadowEvent, shadow_key


class _ShadowSettings(CommonSettings, TrustSettings):
    """The common settings and the public key the candidate is verified with."""


def announce_shadow(settings: CommonSettings, ref: ServingRef | None) -> int:
    """Put the shadow announcement (``ref`` None: stop) on the models topic; its offset."""
    from forestream.edge.factory import require_reachable
    from forestream.registry.announce import ModelsTopic

    require_reachable(settings.kafka())  # one line now, not a client retrying for seconds
    event = ShadowEvent(name=settings.model_name, shadow=ref, at=int(time.time() * 1000))
    with ModelsTopic(settings.kafka(), settings.models_topic) as models:
        return models.put(shadow_key(settings.model_name), event.model_dump_json().encode())


def models_shadow(
    version: Annotated[
        str | None, typer.Argument(help="candidate version to score in shadow, e.g. v4")
    ] = None,
    stop: Annotated[
        bool, typer.Option("--stop", help="stop shadow scoring (no version is given)")
    ] = False,
    name: ModelNameOpt = None,
    store: StoreOpt = None,
    bootstrap_servers: BootstrapOpt = None,
    models_topic: ModelsTopicOpt = None,
    verify_key: VerifyKeyOpt = None,
    allow_unsigned: AllowUnsignedOpt = None,
) -> None:
    """Score a candidate version in shadow on every worker (predictions to the shadow topic,
    never the output topic), or stop with --stop. Verified first, like promote."""
    if stop == (version is not None):
        raise UserError("give either a version to shadow or --stop, not both and not neither")
    settings = load_settings(
        _ShadowSettings,
        model_name=name,
        model_store=store,
        bootstrap_servers=bootstrap_servers,
        models_topic=models_topic,
        verify_key_file=verify_key,
        allow_unsigned=allow_unsigned,
    )
    if version is None:
        announce_shadow(settings, None)
        typer.echo(f"shadow {settings.model_name} stopped")
        return
    settings.require_verification()
    # what no worker could load (altered, unsigned, another key) is refused here, as by promote
    meta = settings.open_store().verify_artifact(
        settings.model_name, version, trust=settings.trust()
    )
    ref = ServingRef(version=meta.version, sha256=meta.artifact_sha256, signature=meta.signature)
    announce_shadow(settings, ref)
    typer.echo(
        f"shadow {settings.model_name} {meta.version}: workers score it beside the served one"
    )
