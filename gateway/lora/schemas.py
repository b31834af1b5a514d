"""The bodies of /lora-adapters and of the per-request ``lora`` field, in llama-server's shape.

Ranges are the wire's (ids are uint32); whether an id names a loaded adapter and whether a scale
is allowed is the worker's to say (engine/lora.py), so HTTP and gRPC give the same answer.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

#: The largest id the wire carries (GenerateRequest.lora's ids are uint32).
MAX_WIRE_ID = 2**32 - 1


class LoraScaleIn(BaseModel):
    """The scale to give one adapter."""

    model_config = ConfigDict(extra="forbid")

    id: int = Field(ge=0, le=MAX_WIRE_ID, description="The adapter's id (GET /lora-adapters).")
    scale: float = Field(
        description="The adapter's scale, between -10 and 10; 0 turns it off.",
        allow_inf_nan=True,  # the worker names the field when it refuses one
    )


class LoraAdapterOut(BaseModel):
    """A loaded adapter: its id, file name and current scale."""

    id: int
    path: str = Field(description="The adapter's file name (never its path on the worker).")
    scale: float
