"""Find the decoder layers of any Hugging Face causal LM and perform layer surgery on them.

The knowledge of where things live is data (``architectures.json``), in the spirit of mergekit's architecture
files; unknown architectures fall back to the longest ``nn.ModuleList`` of same-class blocks, with a warning.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Iterable, Sequence

from torch import nn

from .errors import DepthpruneError

logger = logging.getLogger(__name__)

# Config keys that count layers, in the order the generic fallback tries them.
_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_norm", "norm_f")
# Config keys that give the longest sequence the model was built (and trained) for.
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len")


@dataclass(frozen=True)
class ArchitectureSpec:
    """Where one architecture keeps its decoder stack (see ``architectures.json`` for the meaning of each field)."""

    model_type: str
    layers: str
    embed: str
    final_norm: str
    lm_head: str
    num_layers_key: str
    per_layer_lists: tuple[str, ...] = ()
    not_per_layer_lists: tuple[str, ...] = ()
    layer_index_lists: tuple[str, ...] = ()
    layer_count_thresholds: tuple[str, ...] = ()
    moe_sparse_step_key: str | None = None
    refuse_if: dict = field(default_factory=dict)
    guessed: bool = False
    # For compensation: where a layer's branch outputs are made (paths inside one decoder layer).
    mlp_output: str = "mlp.down_proj"
    attn_output: str = "self_attn.o_proj"
    branch_output_norms: tuple[str, ...] = ()
    compensation_refuse_if: dict = field(default_factory=dict)


@lru_cache(maxsize=1)
def architecture_table() -> dict[str, ArchitectureSpec]:
    """The architecture table, keyed by ``model_type``."""
    raw = json.loads(resources.files("depthprune").joinpath("architectures.json").read_text())
    defaults = raw["defaults"]
    table = {}
    for model_type, overrides in raw["architectures"].items():
        entry = {**defaults, **overrides}
        table[model_type] = ArchitectureSpec(
            model_type=model_type,
            layers=entry["layers"],
            embed=entry["embed"],
            final_norm=entry["final_norm"],
            lm_head=entry["lm_head"],
            num_layers_key=entry["num_layers_key"],
            per_layer_lists=tuple(entry["per_layer_lists"]),
            not_per_layer_lists=tuple(entry["not_per_layer_lists"]),
            layer_index_lists=tuple(entry["layer_index_lists"]),
            layer_count_thresholds=tuple(entry["layer_count_thresholds"]),
            moe_sparse_step_key=entry.get("moe_sparse_step_key"),
            refuse_if=dict(entry["refuse_if"]),
            mlp_output=entry["mlp_output"],
            attn_output=entry["attn_output"],
            branch_output_norms=tuple(entry["branch_output_norms"]),
            compensation_refuse_if=dict(entry["compensation_refuse_if"]),
        )
    return table


def supported_architectures() -> list[str]:
    """The ``model_type`` names the table knows (others go through the guessing fallback)."""
    return sorted(architecture_table())


def _get_path(root: nn.Module, path: str):
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _set_path(root: nn.Module, path: str, value) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = _get_path(root, parent_path) if parent_path else root
    setattr(parent, name, value)


def _text_config(config):
    """The config that describes the decoder stack: the model's own, or ``text_config`` of a multimodal model."""
    if getattr(config, "model_type", None) in architecture_table():
        return config
    sub = getattr(config, "text_config", None)
    if sub is not None:
        return sub
    return config


class ModelAdapter:
    """A view of a causal LM that knows where its decoder layers, embedding, final norm and head are.

    Args:
        model: a ``transformers`` causal LM (or a multimodal model whose text model is a known architecture).
        allow_guess: use the generic fallback for architectures not in the table (a warning says so).
    """

    def __init__(self, model: nn.Module, allow_guess: bool = True):
        self.model = model
        self.text_config = _text_config(model.config)
        model_type = getattr(self.text_config, "model_type", None)
        table = architecture_table()
        if model_type in table:
            self.spec = table[model_type]
            self.decoder_path = self._find_decoder(self.spec)
        elif allow_guess:
            self.spec, self.decoder_path = self._guess(model_type)
        else:
            raise DepthpruneError(
                f"unsupported architecture {model_type!r}; supported: {', '.join(supported_architectures())} "
                "(or allow the generic fallback)"
            )

    # ----------------------------------------------------------------------------------------------- locating
    def _find_decoder(self, spec: ArchitectureSpec) -> str:
        for name, module in self.model.named_modules():
            config = getattr(module, "config", None)
            if getattr(config, "model_type", None) != spec.model_type:
                continue
            if isinstance(_get_path(module, spec.layers), nn.ModuleList):
                return name
        raise DepthpruneError(
            f"could not find the decoder layers of this {spec.model_type!r} model at '<decoder>.{spec.layers}'; "
            "the model class is not the one the architecture table expects — report it with the model's class name"
        )

    def _guess(self, model_type: str | None) -> tuple[ArchitectureSpec, str]:
        best_name, best_list = None, None
        for name, module in self.model.named_modules():
            if isinstance(module, nn.ModuleList) and len(module) > 0:
                classes = {type(child) for child in module}
                if len(classes) == 1 and (best_list is None or len(module) > len(best_list)):
                    best_name, best_list = name, module
        if best_list is None:
            raise DepthpruneError(
                f"unsupported architecture {model_type!r}: no list of decoder blocks found; "
                f"supported: {', '.join(supported_architectures())}"
            )
        decoder_path, _, layers_attr = best_name.rpartition(".")
        decoder = _get_path(self.model, decoder_path) if decoder_path else self.model
        count_key = next(
            (k for k in _LAYER_COUNT_KEYS if getattr(self.text_config, k, None) == len(best_list)), None
        )
        if count_key is None:
            raise DepthpruneError(
                f"unsupported architecture {model_type!r}: found {len(best_list)} blocks at {best_name!r} but no config "
                f"key among {_LAYER_COUNT_KEYS} counts them; supported: {', '.join(supported_architectures())}"
            )
        final_norm = next((n for n in _FINAL_NORM_NAMES if isinstance(getattr(decoder, n, None), nn.Module)), "")
        embed_module = self.model.get_input_embeddings()
        head_module = self.model.get_output_embeddings()
        names = {id(m): n for n, m in self.model.named_modules()}
        prefix = f"{decoder_path}." if decoder_path else ""
        embed = names.get(id(embed_module), "")
        spec = ArchitectureSpec(
            model_type=str(model_type),
            layers=layers_attr,
            embed=embed[len(prefix):] if embed.startswith(prefix) else embed,
            final_norm=final_norm,
            lm_head=names.get(id(head_module), "") if head_module is not None else "",
            num_layers_key=count_key,
            per_layer_lists=architecture_table()["llama"].per_layer_lists,
            not_per_layer_lists=architecture_table()["llama"].not_per_layer_lists,
            guessed=True,
        )
        message = (
            f"depthprune: architecture {model_type!r} is not in the table; guessing that the decoder layers are "
            f"{best_name!r} ({len(best_list)} x {type(best_list[0]).__name__}), layer count in config.{count_key}"
        )
        warnings.warn(message, stacklevel=3)
        return spec, decoder_path

    @property
    def decoder(self) -> nn.Module:
        """The text decoder module (e.g. ``LlamaModel``) that owns layers, embedding and final norm."""
        return _get_path(self.model, self.decoder_path) if self.decoder_path else self.model

    def _qualified(self, relative: str) -> str:
        return f"{self.decoder_path}.{relative}" if self.decoder_path else relative

    @property
    def layers_path(self) -> str:
        """Dotted path of the layer list from the top model, e.g. ``model.layers`` (state-dict prefix)."""
        return self._qualified(self.spec.layers)

    @property
    def embed_path(self) -> str:
        return self._qualified(self.spec.embed)

    @property
    def final_norm_path(self) -> str | None:
        return self._qualified(self.spec.final_norm) if self.spec.final_norm else None

    @property
    def layers(self) -> nn.ModuleList:
        return _get_path(self.model, self.layers_path)

    @property
    def embed(self) -> nn.Module:
        return _get_path(self.model, self.embed_path)

    @property
    def final_norm(self) -> nn.Module | None:
        """The norm applied after the last layer, or None (e.g. OPT-350m has none)."""
        return _get_path(self.model, self.final_norm_path) if self.final_norm_path else None

    @property
    def lm_head(self) -> nn.Module | None:
        return _get_path(self.model, self.spec.lm_head) if self.spec.lm_head else None

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def describe(self) -> dict:
        """A summary for ``depthprune info``."""
        params = sum(p.numel() for p in self.model.parameters())
        dtypes = sorted({str(p.dtype).replace("torch.", "") for p in self.model.parameters()})
        head = self.lm_head
        tied = head is not None and getattr(head, "weight", None) is getattr(self.embed, "weight", object())
        return {
            "architecture": type(self.model).__name__,
            "model_type": self.spec.model_type,
            "architecture_source": "guessed (generic fallback)" if self.spec.guessed else "architecture table",
            "num_layers": self.num_layers,
            "layer_class": type(self.layers[0]).__name__,
            "layers_path": self.layers_path,
            "hidden_size": getattr(self.text_config, "hidden_size", getattr(self.text_config, "n_embd", None)),
            "parameters": params,
            "parameters_per_layer": sum(p.numel() for p in self.layers[0].parameters()),
            "dtype": ",".join(dtypes),
            "tied_embeddings": tied,
        }

    # ------------------------------------------------------------------------------------------------ surgery
    def check_removal(self, layers: Iterable[int], allow_final_layer: bool = False, allow_first_layer: bool = False,
                      allow_single_layer: bool = False) -> tuple[list[int], list[int]]:
        """Validate a set of layers to remove; returns ``(removed, kept)``, sorted, in the current numbering.

        The first and the final layer, and plans that leave a single layer, need an explicit ``allow_*``: a criterion
        asked for too many layers otherwise silently removes the layers that matter most.
        """
        num_layers = self.num_layers
        removed = check_layer_indices(layers, num_layers, allow_final_layer=allow_final_layer,
                                      allow_first_layer=allow_first_layer, allow_single_layer=allow_single_layer)
        for key, bad_value in self.spec.refuse_if.items():
            if getattr(self.text_config, key, None) == bad_value:
                raise DepthpruneError(
                    f"cannot remove layers exactly when config.{key}={bad_value!r} (the layer's maths depends on its "
                    f"position); set {key}={not bad_value!r} only if that is what the model was trained with"
                )
        self.check_config_lists()
        kept = [i for i in range(num_layers) if i not in set(removed)]
        return removed, kept

    def check_config_lists(self) -> None:
        """Refuse a config whose per-layer lists surgery would get wrong, before any layer is touched.

        A list the table marks as per-layer must have one entry per layer; a list of that length that the table
        does not know is probably per-layer too, and leaving it unfiltered would describe the wrong layers.
        """
        config, spec, count = self.text_config, self.spec, self.num_layers
        for key in spec.per_layer_lists:
            values = getattr(config, key, None)
            if values is not None and len(values) != count:
                raise DepthpruneError(f"config.{key} has {len(values)} entries but the model has {count} layers; fix "
                                      "the config")
        known = set(spec.per_layer_lists) | set(spec.layer_index_lists) | set(spec.not_per_layer_lists)
        unknown = sorted(key for key, value in config.to_dict().items()
                         if isinstance(value, list) and len(value) == count and key not in known)
        if unknown:
            key = unknown[0]
            entry = f"the {spec.model_type!r} entry" if not spec.guessed else f"a new {spec.model_type!r} entry"
            raise DepthpruneError(
                f"config.{key} has one entry per layer ({count}) but the architecture table does not say what it "
                f"is; add {key!r} to \"per_layer_lists\" (filtered with the kept layers) or \"not_per_layer_lists\" "
                f"(left as is) of {entry} in depthprune/architectures.json"
            )

    def keep_layers(self, kept: Sequence[int]) -> None:
        """Keep only ``kept`` (current numbering, ascending) and fix every place that counts or indexes layers."""
        self.check_config_lists()   # refuse before the model is changed, not halfway through
        config = self.text_config
        old_count = self.num_layers
        old_layers = self.layers
        new_layers = nn.ModuleList([old_layers[i] for i in kept])
        _set_path(self.model, self.layers_path, new_layers)

        # The KV cache is keyed by layer_idx, so every submodule that carries one takes its new position.
        for new_index, layer in enumerate(new_layers):
            for module in layer.modules():
                if isinstance(getattr(module, "layer_idx", None), int):
                    module.layer_idx = new_index

        self._fix_config(config, kept, old_count)
        top = self.model.config
        if top is not config and getattr(top, "text_config", None) is not None:
            top.text_config = config

    def _fix_config(self, config, kept: Sequence[int], old_count: int) -> None:
        spec = self.spec
        kept_set = set(kept)
        new_index = {old: new for new, old in enumerate(kept)}

        # MoE models that derive "which layers are sparse" from a step cannot express an arbitrary subset with a
        # step, so the sparse/dense pattern is made explicit: step 1 and a list of dense layers.
        step_key = spec.moe_sparse_step_key
        if step_key and getattr(config, step_key, 1) not in (None, 1) and getattr(config, "num_experts", 0):
            step = getattr(config, step_key)
            dense = set(getattr(config, "mlp_only_layers", None) or [])
            sparse = {i for i in range(old_count) if i not in dense and (i + 1) % step == 0}
            setattr(config, step_key, 1)
            config.mlp_only_layers = [new_index[i] for i in kept if i not in sparse]
            handled_index_lists = {"mlp_only_layers"}
        else:
            handled_index_lists = set()

        for key in spec.per_layer_lists:
            values = getattr(config, key, None)
            if values is None:
                continue
            setattr(config, key, [values[i] for i in kept])
        for key in spec.layer_index_lists:
            values = getattr(config, key, None)
            if values is None or key in handled_index_lists:
                continue
            setattr(config, key, [new_index[i] for i in values if i in kept_set])
        for key in spec.layer_count_thresholds:
            threshold = getattr(config, key, None)
            if isinstance(threshold, int):
                setattr(config, key, sum(1 for i in kept if i < threshold))
        setattr(config, spec.num_layers_key, len(kept))



def check_layer_indices(layers: Iterable[int], num_layers: int, allow_final_layer: bool = False,
                        allow_first_layer: bool = False, allow_single_layer: bool = False) -> list[int]:
    """The checks of :meth:`ModelAdapter.check_removal` that need only the layer count; returns ``removed``, sorted.

    Also used on files whose model is never built (a GGUF pruned at the file level).
    """
    layers = list(layers)
    for index in layers:
        if not isinstance(index, int) or isinstance(index, bool):
            raise DepthpruneError(f"layer index {index!r} is not an integer; give 0-based layer numbers")
        if not 0 <= index < num_layers:
            raise DepthpruneError(
                f"layer {index} is out of range: this model has {num_layers} layers, numbered 0..{num_layers - 1}"
            )
    duplicates = sorted({i for i in layers if layers.count(i) > 1})
    if duplicates:
        raise DepthpruneError(f"layer(s) {duplicates} listed more than once; list each layer once")
    removed = sorted(layers)
    if len(removed) >= num_layers:
        raise DepthpruneError(f"cannot remove all {num_layers} layers; keep at least one")
    if 0 in removed and not allow_first_layer:
        raise DepthpruneError(
            "refusing to remove the first layer (0): it turns embeddings into the representation every later "
            "layer expects; ask for fewer layers, or pass --allow-first-layer (allow_first_layer=True) if you "
            "mean it"
        )
    if num_layers - len(removed) < 2 and not allow_single_layer:
        raise DepthpruneError(
            f"removing {len(removed)} of {num_layers} layers leaves one; ask for fewer layers (at most "
            f"{num_layers - 2}), or pass --allow-single-layer (allow_single_layer=True) if you mean it"
        )
    if (num_layers - 1) in removed and not allow_final_layer:
        raise DepthpruneError(
            f"refusing to remove the final layer ({num_layers - 1}): it shapes the output distribution; "
            "pass --allow-final-layer (allow_final_layer=True) if you mean it"
        )
    return removed


def context_length(model: nn.Module) -> tuple[int, str] | None:
    """``(tokens, config key)``: the longest sequence the model's config allows, or None when it does not say."""
    config = _text_config(model.config)
    for key in _CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, key
    return None


def check_context_length(model: nn.Module, length: int, option: str = "--seq-len") -> None:
    """Refuse sequences longer than the model's context: positions past it are untrained (or do not exist)."""
    limit = context_length(model)
    if limit is not None and length > limit[0]:
        raise DepthpruneError(f"{option} {length} is longer than this model's context ({limit[1]} = {limit[0]}); "
                              f"use {option} {limit[0]} or less")


def remove_layers(model: nn.Module, layers: Iterable[int], allow_final_layer: bool = False,
                  allow_first_layer: bool = False, allow_single_layer: bool = False) -> list[int]:
    """Delete decoder layers in place and fix the config, layer indices and per-layer config lists.

    Args:
        model: a causal LM.
        layers: 0-based indices of the layers to delete.
        allow_final_layer, allow_first_layer, allow_single_layer: the final layer, the first layer and a plan that
            leaves one layer are refused unless these are set.

    Returns:
        The kept layers, in the numbering before the call.
    """
    adapter = ModelAdapter(model)
    _, kept = adapter.check_removal(layers, allow_final_layer=allow_final_layer, allow_first_layer=allow_first_layer,
                                    allow_single_layer=allow_single_layer)
    adapter.keep_layers(kept)
    return kept
