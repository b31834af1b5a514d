"""The body of POST /slots/{id_slot} (no gRPC, no ML imports)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, StrictStr

from llamagrid.gateway.fields import UNSET_SCHEMA

#: What POST /slots/{id_slot} may do, as llama-server names it.
Action = Literal["save", "restore", "erase"]
#: The longest filename the gateway passes on, in characters (the worker allows 200 bytes):
#: anything longer is refused here without a call.
MAX_FILENAME_CHARS = 1024


class SlotActionRequest(BaseModel):
    """llama-server's slot action body: the file to save to or restore from. Undeclared
    fields are kept, to be refused by name."""

    model_config = ConfigDict(
        extra="allow", json_schema_extra={"additionalProperties": UNSET_SCHEMA}
    )

    #: A plain file name inside the worker's --slot-save-path (save and restore only).
    filename: StrictStr | None = None
