"""What the engine thread builds once the model is loaded: model, contexts, scheduler, embedder.

Created and used on the engine thread only (LlamaEngine in llama_engine.py owns that thread),
except ``prompts``, which the tokenizer threads call (engine/prompts.py).
Loading checks GPU offload, sizes the generation and embedding contexts from the settings, and
warms both up so that the first request pays nothing extra.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

from llamagrid.worker.engine.chat_template import ChatTemplate, load_template_source
from llamagrid.worker.engine.counters import EngineCounters
from llamagrid.worker.engine.dimensions import EmbeddingDimensions
from llamagrid.worker.engine.embedder import Embedder
from llamagrid.worker.engine.infill import FimTokens
from llamagrid.worker.engine.limits import RequestLimits
from llamagrid.worker.engine.lora import parse_scaled
from llamagrid.worker.engine.parsing import chosen_tool_format
from llamagrid.worker.engine.prompts import MEDIA_MARKER_ID
from llamagrid.worker.engine.reports import ModelDescription
from llamagrid.worker.engine.request_prompts import RequestPrompts
from llamagrid.worker.engine.scheduler import Scheduler
from llamagrid.worker.engine.special_texts import SpecialToken, SpecialTokens
from llamagrid.worker.engine.vision import ImageEvaluator
from llamagrid.worker.model_source import ModelSource
from llamagrid.worker.native import devices as dv
from llamagrid.worker.native import llama_backend as lb
from llamagrid.worker.native.lora import LoraSet
from llamagrid.worker.settings import WorkerSettings

if TYPE_CHECKING:
    from llamagrid.worker.native.mtmd import Projector


class ProjectorFileError(RuntimeError):
    """--mmproj names no file."""


#: Embedding inputs packed into one decode.
EMBED_SEQUENCES = 16


class Runtime:
    """Everything created on the engine thread once the model is loaded."""

    def __init__(self, s: WorkerSettings, source: ModelSource) -> None:
        lb.init_backend(verbose=s.log_level.lower() == "debug")
        self.cuda_visible = cuda_visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        dv.check_offload_possible(
            s.n_gpu_layers, lb.supports_gpu_offload(), lb.backend_names(), cuda_visible
        )
        self.settings = s
        self.source = source
        self.model = lb.Model(
            lb.ModelOptions(
                path=str(source.path),
                n_gpu_layers=s.n_gpu_layers,
                main_gpu=s.main_gpu,
                split_mode=s.split_mode,
                tensor_split=tuple(s.tensor_split),
                use_mmap=s.use_mmap,
                use_mlock=s.use_mlock,
            )
        )
        #: The LoRA adapters (--lora, then --lora-scaled), in id order, and their scales.
        files = [(path, 1.0) for path in s.lora] + [parse_scaled(e) for e in s.lora_scaled]
        self.lora = LoraSet(self.model, [path for path, _ in files]) if files else None
        self.lora_files = tuple(os.path.basename(path) for path, _ in files)
        lora_scales = tuple(scale for _, scale in files)
        self.placement = self._place()
        dv.check_offloaded(self.placement, cuda_visible)
        info = self.model.describe()
        #: The widths Embed requests may truncate to; a listed width wider than the model's
        #: vectors fails the load.
        self.embedding_dimensions = EmbeddingDimensions.parse(s.embedding_dimensions)
        self.embedding_dimensions.check_model(info["n_embd"])
        self.on_gpu = self.placement.offloaded_layers > 0
        n_ctx = s.n_ctx or info["n_ctx_train"] * s.parallel
        threads = s.n_threads or (os.cpu_count() or 1)
        gen_opts = lb.ContextOptions(
            n_ctx=n_ctx,
            n_seq_max=s.parallel,
            n_batch=s.n_batch,
            n_ubatch=s.n_ubatch,
            n_threads=threads,
            n_threads_batch=s.n_threads_batch,
            flash_attn=s.flash_attn,
            kv_unified=s.kv_unified,
        )
        self.ctx = lb.Context(self.model, gen_opts)
        per_seq = self.ctx.n_ctx // s.parallel
        embed_opts = dataclasses.replace(
            gen_opts,
            n_ctx=per_seq,
            n_seq_max=EMBED_SEQUENCES,
            n_batch=per_seq,
            n_ubatch=per_seq,
            embeddings=True,
            pooling=s.pooling,
            kv_unified=True,
            # On the CPU, flash attention would make a vector depend on its batch neighbours.
            flash_attn=s.flash_attn if self.on_gpu else "off",
        )
        embed_ctx = lb.Context(self.model, embed_opts)
        if embed_ctx.pooling == "none":  # a causal LM: no pooling of its own, so mean
            embed_ctx.close()
            embed_ctx = lb.Context(self.model, dataclasses.replace(embed_opts, pooling="mean"))
        self.embedder = Embedder(self.model, embed_ctx, step_tokens=s.n_batch)
        #: The vision projector (--mmproj) and what evaluates images with it, or None.
        self.projector, vision = self._load_projector(threads)
        template_src = load_template_source(s.chat_template) or self.model.chat_template()
        self.template = ChatTemplate(template_src, self.model.bos_text, self.model.eos_text)
        self.template.check()
        rows = [SpecialToken(*row) for row in self.model.special_tokens()]
        if self.projector is not None:  # client text escapes the media marker (prompts.py)
            rows.append(SpecialToken(MEDIA_MARKER_ID, self.projector.marker, control=False))
        specials = SpecialTokens(rows)
        #: Renders and tokenizes prompts on tokenizer threads (LlamaEngine's pool).
        self.prompts = RequestPrompts(
            self.model,
            self.template,
            specials,
            special_in_content=s.special_tokens_in_content,
            special_in_prompt=s.special_tokens_in_prompt,
            fim=FimTokens.of(*self.model.fim_tokens()),
            infill_window=(s.n_batch, self.ctx.n_ctx // s.parallel),
            images=self.projector,
            image_limits=(s.max_image_bytes, s.max_image_pixels),
            tool_format=chosen_tool_format(s.tool_call_format, template_src),
        )
        self.counters = EngineCounters()
        self.scheduler = Scheduler(
            self.model,
            self.ctx,
            self.prompts,
            s.queue_timeout_s,
            self.counters,
            limits=RequestLimits.from_settings(s),
            host_budget_bytes=s.host_cache_mib << 20,
            lora=self.lora,
            lora_scales=lora_scales,
            vision=vision,
        )
        self.info = info
        self.scheduler.warm_up()
        self.scheduler.check_host_tier()
        self.embedder.warm_up(self.model.tokenize("Hello", True, True))
        self.placement = self._place()  # again: free memory once the KV caches are allocated

    def _load_projector(self, threads: int) -> tuple[Projector | None, ImageEvaluator | None]:
        """Load --mmproj for the model (on its GPU when the model is offloaded); a file that is
        not a vision projector for this model stops the worker here, with llama.cpp's reason."""
        path = self.settings.mmproj
        if not path:
            return None, None
        if not os.path.isfile(path):
            raise ProjectorFileError(f"--mmproj {path}: no such file")
        from llamagrid.worker.native import mtmd  # needs libmtmd: only imported when asked for

        projector = mtmd.Projector(path, self.model, self.on_gpu, threads)
        try:
            batch = mtmd.EmbeddingBatch(self.settings.n_batch, projector.n_embd)
        except BaseException:
            projector.close()
            raise
        return projector, ImageEvaluator(projector, batch, self.ctx)

    def _place(self) -> dv.Placement:
        m = self.model
        return dv.placement(
            self.settings,
            lb.devices(),
            m.load_log,
            m.n_layers,
            m.device_names or (),
            self.cuda_visible,
        )

    def describe(self) -> ModelDescription:
        s, info = self.settings, self.info
        return ModelDescription(
            alias=self.source.alias,
            file=self.source.path.name,  # not the path: callers need not know the layout
            hf_repo=self.source.hf_repo,
            context_per_slot=self.scheduler.seq_ctx,
            train_context_size=info["n_ctx_train"],
            parameter_count=info["n_params"],
            size_bytes=info["size"],
            chat_template=self.template.source,
            can_generate=info["has_decoder"],
            can_embed=True,
            slots=s.parallel,
            embedding_size=info["n_embd"],
            vocab_size=self.model.n_vocab,
            pooling=self.embedder.ctx.pooling,
            description=info["desc"],
            embedding_dimensions=self.embedding_dimensions,
            fill_in_middle=self.prompts.fim is not None,
            media_marker=self.projector.marker if self.projector is not None else None,
        )

    def close(self) -> None:
        self.scheduler.close()
        self.embedder.close()
        self.prompts.close()  # waits for tokenizer threads still reading the vocabulary
        if self.projector is not None:
            self.projector.close()
        self.ctx.close()
        self.model.close()
