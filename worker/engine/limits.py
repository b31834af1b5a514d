"""The limits a generation request is held to, beyond the range of each number.

Every value here bounds work or memory that a client could otherwise make unbounded: the
size and nesting of a grammar or JSON schema (llama.cpp's grammar parser recurses once per
nesting level, and llama-cpp-python's schema converter nests once per repeated item), the
stop strings (each one is searched for after every token), and the time a grammar may take to
compile. The defaults are WorkerSettings' (``--max-grammar-bytes`` and so on).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llamagrid.worker.settings import WorkerSettings

#: llama.cpp's own ceiling on a {m,n} count (MAX_REPETITION_THRESHOLD in llama-grammar.cpp): a
#: larger minimum is a parse error, a larger maximum silently means "unbounded".
GBNF_MAX_REPETITION = 2000
#: The most grammar elements (characters, ranges, references) a grammar may expand into once
#: its repetitions are written out, as llama.cpp does; a 60 KB literal repeated 2000 times
#: would otherwise take gigabytes.
GBNF_MAX_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class RequestLimits:
    """Bounds on the parts of a request whose cost the client chooses."""

    #: Longest GBNF grammar in UTF-8 bytes: a client's ``grammar``, or a schema's conversion.
    max_grammar_bytes: int = 65536
    #: Deepest nesting of parentheses in one GBNF rule.
    max_grammar_depth: int = 1024
    #: Longest JSON schema (``response_format``) in UTF-8 bytes.
    max_schema_bytes: int = 65536
    #: Deepest nesting of JSON objects and arrays in a schema document.
    max_schema_depth: int = 64
    #: Largest minLength/maxLength/minItems/maxItems, and {m,n} count in a schema's patterns.
    #: The converter nests one group per optional item, and llama.cpp refuses a group that
    #: holds 2000 rules or more: about 990 nested items, fewer in some arrays.
    max_schema_count: int = 500
    #: Most properties in one object of a schema (the converter is quadratic in them).
    max_schema_properties: int = 256
    #: Most stop strings per request.
    max_stop_strings: int = 16
    #: Longest stop string in UTF-8 bytes.
    max_stop_bytes: int = 256
    #: Longest time a grammar or schema may take to become a sampler, in seconds.
    grammar_timeout_s: float = 5.0
    #: Most messages in one conversation.
    max_messages: int = 4096
    #: Most UTF-8 bytes of text in one request.
    max_prompt_bytes: int = 8 * 1024 * 1024
    #: Most inputs in one Embed request.
    max_embed_inputs: int = 2048
    #: Most token ids in one request.
    max_token_ids: int = 1 << 22
    #: Longest prompt whose log-probabilities one request may ask for (prompt_logprobs).
    max_prompt_logprobs_tokens: int = 8192
    #: Most images in one request (vision models).
    max_images: int = 8
    #: Largest encoded image, in bytes.
    max_image_bytes: int = 10 * 1024 * 1024
    #: Most pixels (width times height) an image may decode to, checked from its header.
    max_image_pixels: int = 4096 * 4096

    @classmethod
    def from_settings(cls, s: WorkerSettings) -> RequestLimits:
        """The limits a worker was configured with (WorkerSettings has one field for each)."""
        return cls(**{f.name: getattr(s, f.name) for f in dataclasses.fields(cls)})


#: The limits of a worker started with default settings.
DEFAULT_LIMITS = RequestLimits()
