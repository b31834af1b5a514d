"""The node API's request and response bodies (LMDeploy's proxy names, llamagrid's additions).

Requests forbid unknown fields, so a misspelt or unsupported one is a 400, never ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llamagrid.gateway.nodes.address import MAX_ADDRESS_CHARS, parse_address

#: Model names one registration may declare, at most.
MAX_DECLARED_MODELS = 64
#: The longest declared model name.
MAX_MODEL_NAME_CHARS = 256
#: Heartbeat intervals a registering worker may declare, in seconds.
MIN_HEARTBEAT_S, MAX_HEARTBEAT_S = 0.1, 300.0

Address = Annotated[
    str,
    Field(
        max_length=MAX_ADDRESS_CHARS,
        description="The worker's gRPC address, HOST:PORT (or grpc://HOST:PORT).",
    ),
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("url", check_fields=False)
    @classmethod
    def _check_url(cls, value: str) -> str:
        return parse_address(value)


class AddNode(_Request):
    """POST /nodes/add: put a worker in rotation until it is removed."""

    url: Address
    status: None = Field(
        None,
        description="Refused when given: llamagrid reads a node's models and load from the "
        "worker itself.",
    )

    @field_validator("status", mode="before")
    @classmethod
    def _no_status(cls, value: object) -> object:
        if value is not None:
            raise ValueError(
                "unsupported: llamagrid reads a node's models and load from the worker itself"
            )
        return value


class RemoveNode(_Request):
    """POST /nodes/remove: drain a worker (the address may come as ?node_url= instead)."""

    url: Address


class RegisterNode(_Request):
    """POST /nodes/register: a worker's registration, renewed by sending it again (heartbeat)."""

    url: Address
    models: list[Annotated[str, Field(min_length=1, max_length=MAX_MODEL_NAME_CHARS)]] = Field(
        default_factory=list,
        max_length=MAX_DECLARED_MODELS,
        description="The models the worker serves, shown until its own model list is read.",
    )
    heartbeat_s: float = Field(
        5.0,
        ge=MIN_HEARTBEAT_S,
        le=MAX_HEARTBEAT_S,
        allow_inf_nan=False,
        description="Seconds between the worker's registrations; it is ejected after "
        "--node-missed-heartbeats of them pass without one.",
    )


class Registered(BaseModel):
    """The answer to a registration."""

    url: str
    state: Literal["registered", "renewed"]
    lease_s: float = Field(description="Seconds before the node is ejected without a renewal.")


class NodeStatus(BaseModel):
    """One node in GET /nodes/status: LMDeploy's fields, then llamagrid's."""

    models: list[str] = Field(description="Models the node serves.")
    unfinished: int = Field(description="Requests running or queued on the node.")
    latency: list[float] = Field(
        description="LMDeploy's recent request latencies; llamagrid keeps none (always empty)."
    )
    speed: None = Field(None, description="LMDeploy's operator-given speed; not used (null).")
    source: Literal["added", "registered", "fleet"] = Field(
        description="How the node joined: /nodes/add, /nodes/register, or the gateway's own "
        "--worker, --worker-dns or supervisor list."
    )
    healthy: bool = Field(description="Whether its grpc.health.v1 watch says SERVING.")
    available: bool = Field(description="Whether new requests may go to it now.")
    ejected: bool = Field(description="Taken out of rotation by the circuit breaker.")
    in_flight: int = Field(description="This gateway's calls running on it.")
    slots: int = Field(description="Requests it runs at once (0: unknown).")
    active_requests: int | None = Field(description="Running requests, from its load report.")
    queued_requests: int | None = Field(description="Queued requests, from its load report.")
    sessions: int = Field(description="Server-side sessions it holds.")
    heartbeat_s: float | None = Field(description="Its declared heartbeat interval (registered).")
    last_heartbeat_s: float | None = Field(
        description="Seconds since its last registration (registered nodes)."
    )
    lease_s: float | None = Field(
        description="Seconds left before it is ejected without a heartbeat (registered nodes)."
    )


def status_json(statuses: dict[str, NodeStatus]) -> dict[str, Any]:
    """GET /nodes/status's body: node address -> its status."""
    return {url: status.model_dump() for url, status in statuses.items()}
