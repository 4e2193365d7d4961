"""Settings of ``forestream produce`` and ``forestream topics create``: env first, flags on top."""

from __future__ import annotations

from pydantic import Field

from forestream.runtime.settings import CommonSettings


class ProducerSettings(CommonSettings):
    """What the producer adds to the common broker/topic settings.

    Bounds live here (not in the CLI) so an env value is checked as strictly as a flag.
    """

    partitions: int = Field(default=4, ge=1, description="partitions of a created input topic")
    rate: float = Field(default=0.0, ge=0.0, description="records/s, 0 = as fast as possible")
    malformed_share: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="share of deliberately bad records"
    )
