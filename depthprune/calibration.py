"""The one streaming calibration pass: capture what enters layer 0, then run the decoder layer by layer.

Every layer-wise criterion is fed from here (llm-compressor's sequential pipeline). The pass

1. runs the decoder once with every layer replaced by a recorder that stores the layer's call (hidden state in,
   positional args, keyword args) and hands its input on. The model computes its masks and position embeddings as
   usual, so Gemma 3's different mask and rotary embedding per layer type are recorded per layer. Layer 0 runs for
   real inside its recorder, which tells us whether layers return a tensor (transformers 5) or a tuple;
2. runs the layers one at a time over all calibration batches ("layer-major"), activations held on CPU, calling
   ``scorer.update(layer_index, hidden_in, hidden_out, attention_mask)`` for every batch.

The output of the last layer is what the scorers see as ``hidden_out`` at ``layer_index = L-1``: read BEFORE the
final norm. Losses (ppl, SLEB) turn a last-layer output into logits through the model's own ``forward``, with the
layers replaced by stand-ins that return that output (:meth:`CalibrationPass.logits`), never a head rebuilt by
hand. With ``sequential=True`` the layers' weights live on the meta device and each one is read from the
checkpoint's safetensors just before it runs and dropped right after, so only one decoder layer is ever in memory.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from .adapter import ModelAdapter
from .errors import DepthpruneError

logger = logging.getLogger(__name__)


class _StopCapture(Exception):
    """Raised by the last recorder: nothing after the decoder layers (final norm, head) needs to run."""


class _Recorder(nn.Module):
    """Stands in for one decoder layer during capture: stores the call, returns the input (layer 0 runs for real)."""

    def __init__(self, index: int, layer: nn.Module, sink: dict, last: bool):
        super().__init__()
        self.index = index
        self.layer = layer
        self.sink = sink
        self.last = last

    def forward(self, hidden_states, *args, **kwargs):
        self.sink["calls"][self.index] = (args, kwargs)
        if self.index == 0:
            self.sink["hidden_in"] = hidden_states
            output = self.layer(hidden_states, *args, **kwargs)
            self.sink["output_template"] = output
            self.sink["hidden_out"] = _hidden_of(output)
            if self.last:
                raise _StopCapture
            return output
        if self.last:
            raise _StopCapture
        template = self.sink["output_template"]
        return hidden_states if isinstance(template, torch.Tensor) else (hidden_states,) + tuple(template[1:])


class _GivenLastOutput(nn.Module):
    """Stands in for every decoder layer while the model's own forward turns a given last-layer output into logits.

    Each stand-in returns ``sink["hidden"]`` (in the layers' own output format) whatever it receives, so the model
    runs everything after its layers exactly as in ``forward``: final norm, OPT-350m's ``project_out``, the head,
    Granite's ``logits_scaling``, Gemma's final soft-capping, and whatever a future architecture adds.
    """

    def __init__(self, sink: dict):
        super().__init__()
        self.sink = sink

    def forward(self, hidden_states, *args, **kwargs):
        hidden = self.sink["hidden"]
        template = self.sink["output_template"]
        return hidden if isinstance(template, torch.Tensor) else (hidden,) + tuple(template[1:])


def _hidden_of(output) -> torch.Tensor:
    """The hidden state returned by a decoder layer: a tensor in transformers 5, the first item of a tuple before."""
    return output if isinstance(output, torch.Tensor) else output[0]


# ------------------------------------------------------------------------------------------ sequential weights
def release_parameters(module: nn.Module) -> None:
    """Move a module's parameters back to the meta device, freeing their memory."""
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None:
                sub._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=False)


class SafetensorsWeights:
    """Reads tensors by name from a checkpoint folder's ``*.safetensors`` files, one tensor at a time.

    Args:
        folder: a checkpoint folder with ``model.safetensors`` or ``model.safetensors.index.json`` + shards.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.file_of = {name: self.folder / file for name, file in weight_map.items()}
        else:
            files = sorted(self.folder.glob("*.safetensors"))
            if not files:
                raise DepthpruneError(f"{self.folder} holds no .safetensors files; sequential mode reads weights from "
                                      "them — re-save the model with safe_serialization=True or drop --sequential")
            from safetensors import safe_open

            self.file_of = {}
            for file in files:
                with safe_open(str(file), framework="pt") as handle:
                    self.file_of.update({name: file for name in handle.keys()})

    def names(self) -> list[str]:
        return list(self.file_of)

    def read(self, names: Iterable[str], device="cpu", dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.file_of[name], []).append(name)
        tensors = {}
        for file, file_names in by_file.items():
            with safe_open(str(file), framework="pt") as handle:
                for name in file_names:
                    tensor = handle.get_tensor(name)
                    if dtype is not None and tensor.is_floating_point():
                        tensor = tensor.to(dtype)
                    tensors[name] = tensor.to(device)
        return tensors

    def layer_names(self, layers_path: str, index: int) -> list[str]:
        prefix = f"{layers_path}.{index}."
        return [name for name in self.file_of if name.startswith(prefix)]


def available_memory_bytes(device) -> int:
    """Free memory on ``device``: GPU free memory, or the machine's available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def load_skeleton(folder: str | os.PathLike, dtype=torch.float32, device="cpu", trust_remote_code: bool = False):
    """A model whose decoder layers are empty (meta) and everything else loaded from the checkpoint's safetensors.

    Returns:
        ``(model, weights)`` where ``weights`` is the :class:`SafetensorsWeights` the layers are read from.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    from accelerate import init_empty_weights

    # Parameters on the meta device, buffers real: rotary inv_freq and the like are computed, not read.
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    model.eval()
    adapter = ModelAdapter(model)
    weights = SafetensorsWeights(folder)
    prefix = adapter.layers_path + "."
    wanted = {name for name, _ in model.named_parameters(remove_duplicate=False) if not name.startswith(prefix)}
    wanted |= {name for name, _ in model.named_buffers() if not name.startswith(prefix)}
    present = [name for name in weights.names() if name in wanted]
    state = weights.read(present, device=device, dtype=dtype)
    model.load_state_dict(state, strict=False, assign=True)
    if getattr(model.config, "tie_word_embeddings", False) or getattr(
            getattr(model.config, "text_config", None), "tie_word_embeddings", False):
        model.tie_weights()
    for module in model.modules():      # buffers such as rotary inv_freq were built on CPU
        for name, buffer in list(module._buffers.items()):
            if buffer is not None and buffer.device.type != "meta":
                module._buffers[name] = buffer.to(device)
    missing = [name for name, param in model.named_parameters() if param.device.type == "meta"
               and not name.startswith(prefix)]
    if missing:
        raise DepthpruneError(f"{folder}: the checkpoint lacks {missing[:3]} (outside the decoder layers); the "
                              "safetensors do not match config.json — re-save the model")
    return model, weights


# ----------------------------------------------------------------------------------------------------- the pass
class CalibrationPass:
    """Runs a causal LM's decoder layer by layer over calibration blocks, activations on CPU.

    Args:
        model: the causal LM (its layers may be empty when ``weights`` is given).
        input_ids: token ids, ``(samples, seq_len)``.
        attention_mask: ``(samples, seq_len)`` with 1 for real tokens, or None for all real.
        batch_size: samples per forward.
        device: where layers run (defaults to the embedding's device).
        weights: read each layer's weights from here just before it runs (sequential mode).
        show_progress: tqdm bars.
    """

    def __init__(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 batch_size: int = 8, device=None, weights: SafetensorsWeights | None = None,
                 show_progress: bool = True):
        if input_ids.dim() != 2 or input_ids.shape[1] < 2:
            raise DepthpruneError(f"calibration ids must be (samples, seq_len >= 2), got {tuple(input_ids.shape)}")
        if batch_size < 1:
            raise DepthpruneError(f"--batch-size must be >= 1 (got {batch_size})")
        self.model = model
        self.adapter = ModelAdapter(model)
        self.num_layers = self.adapter.num_layers
        self.weights = weights
        self.show_progress = show_progress
        embed_weight = getattr(self.adapter.embed, "weight", None)
        self.device = torch.device(device) if device is not None else (
            embed_weight.device if embed_weight is not None else torch.device("cpu"))
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self.batches = [(ids, mask) for ids, mask in zip(input_ids.split(batch_size), attention_mask.split(batch_size))]
        self.calls: list[list] = []          # [batch][layer] -> (args, kwargs), tensors on self.device
        self.first_outputs: list[torch.Tensor] = []
        self.current_batch = 0
        self.loaded: set[int] = set()
        self._initial_states: list[torch.Tensor] | None = None
        self._output_template = None        # what layer 0 returned at capture: a tensor, or a tuple (older layers)

    @property
    def sequential(self) -> bool:
        return self.weights is not None

    @property
    def num_tokens(self) -> int:
        return int(sum(mask.sum() for _, mask in self.batches))

    def _bar(self, iterable, **kwargs):
        from tqdm.auto import tqdm

        return tqdm(iterable, disable=not self.show_progress, **kwargs)

    # ------------------------------------------------------------------------------------------ layer weights
    def load_layer(self, index: int) -> None:
        """Make layer ``index`` runnable (reads it from safetensors in sequential mode)."""
        if self.weights is None or index in self.loaded:
            return
        layer = self.adapter.layers[index]
        prefix = f"{self.adapter.layers_path}.{index}."
        names = self.weights.layer_names(self.adapter.layers_path, index)
        if not names:
            raise DepthpruneError(f"the checkpoint has no weights for layer {index} ({prefix}*); it does not match "
                                  "config.json")
        dtype = next((p.dtype for p in layer.parameters()), None)
        state = {name[len(prefix):]: tensor for name, tensor in
                 self.weights.read(names, device=self.device, dtype=dtype).items()}
        layer.load_state_dict(state, strict=True, assign=True)
        self.loaded.add(index)

    def release_layer(self, index: int) -> None:
        if self.weights is None or index not in self.loaded:
            return
        release_parameters(self.adapter.layers[index])
        self.loaded.discard(index)

    # ---------------------------------------------------------------------------------------------- capture
    @torch.no_grad()
    def capture(self) -> list[torch.Tensor]:
        """Record every layer's call for every batch; returns ``h[0]`` per batch, ``(batch, seq, hidden)`` on CPU."""
        layers = self.adapter.layers
        originals = list(layers)
        self.load_layer(0)
        decoder = self.adapter.decoder
        hidden_in = []
        self.calls, self.first_outputs = [], []
        try:
            for ids, mask in self._bar(self.batches, desc="capturing layer inputs", unit="batch"):
                sink = {"calls": [None] * self.num_layers}
                for index in range(self.num_layers):
                    layers[index] = _Recorder(index, originals[index], sink, last=index == self.num_layers - 1)
                try:
                    decoder(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), use_cache=False)
                except _StopCapture:
                    pass
                if any(call is None for call in sink["calls"]):
                    raise DepthpruneError("the model's forward did not call every decoder layer once; this "
                                          "architecture cannot be scored layer by layer — report its class name")
                self.calls.append(sink["calls"])
                self._output_template = sink["output_template"]
                hidden_in.append(sink["hidden_in"].detach().to("cpu"))
                self.first_outputs.append(sink["hidden_out"].detach().to("cpu"))
        finally:
            for index, layer in enumerate(originals):
                layers[index] = layer
        return hidden_in

    # ---------------------------------------------------------------------------------------------- running
    def run_layer(self, index: int, hidden: torch.Tensor, batch: int) -> torch.Tensor:
        """Layer ``index`` on ``hidden`` (on ``self.device``) with the call recorded for ``batch``."""
        args, kwargs = self.calls[batch][index]
        return _hidden_of(self.adapter.layers[index](hidden.to(self.device), *args, **kwargs))

    def run_layers(self, hidden: torch.Tensor, batch: int, layers: Sequence[int]) -> torch.Tensor:
        for index in layers:
            hidden = self.run_layer(index, hidden, batch)
        return hidden

    @torch.no_grad()
    def logits(self, hidden: torch.Tensor, input_ids: torch.Tensor | None = None,
               attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The model's own logits for a given output of its last layer; float32 ``(batch, seq, vocab)``.

        Runs the model's ``forward`` with every decoder layer replaced by a stand-in that returns ``hidden``, so
        the path from the last layer to the logits is the model's own on every architecture (no head rebuilt by
        hand). Embedding and mask building run too; they cost a small fraction of one layer.

        Args:
            hidden: the last layer's output, ``(batch, seq, hidden)``.
            input_ids, attention_mask: the batch's tokens ``(batch, seq)``; they only feed the parts of the forward
                before the layers, whose results the stand-ins ignore (zeros and all-real when not given).
        """
        if self._output_template is None:
            self.initial_states()       # learns the layers' output format (tensor or tuple)
        hidden = hidden.to(self.device)
        if input_ids is None:
            input_ids = torch.zeros(hidden.shape[:2], dtype=torch.long, device=self.device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        layers = self.adapter.layers
        originals = list(layers)
        sink = {"hidden": hidden, "output_template": self._output_template}
        try:
            for index in range(len(originals)):
                layers[index] = _GivenLastOutput(sink)
            output = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                                use_cache=False)
        finally:
            for index, layer in enumerate(originals):
                layers[index] = layer
        return output.logits.float()

    def nll(self, hidden: torch.Tensor, batch: int) -> tuple[float, int]:
        """Summed next-token negative log-likelihood of a batch and the number of predicted tokens."""
        ids, mask = self.batches[batch]
        ids, mask = ids.to(self.device), mask.to(self.device)
        total, count = 0.0, 0
        for row in range(hidden.shape[0]):      # one sample at a time: logits are (seq, vocab) fp32
            logits = self.logits(hidden[row:row + 1], ids[row:row + 1], mask[row:row + 1])[0, :-1]   # (seq-1, vocab)
            targets = ids[row, 1:]
            valid = (mask[row, 1:] > 0) & (mask[row, :-1] > 0)
            losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
            total += float(losses[valid].sum())
            count += int(valid.sum())
        return total, count

    @torch.no_grad()
    def stream(self, scorers: Sequence) -> None:
        """The pass: capture, then layer by layer over all batches, feeding every scorer; then ``finalize``."""
        for scorer in scorers:
            if hasattr(scorer, "bind"):
                scorer.bind(self)
        states = self.capture()
        if not self.sequential:
            self._initial_states = list(states)     # h[0] kept for removal-based passes (sleb) after this one
        for index in self._bar(range(self.num_layers), desc="scoring layers", unit="layer"):
            self.load_layer(index)
            for batch, hidden in enumerate(states):
                self.current_batch = batch
                hidden_in = hidden.to(self.device)
                if index == 0:
                    hidden_out = self.first_outputs[batch].to(self.device)
                else:
                    hidden_out = self.run_layer(index, hidden_in, batch)
                mask = self.batches[batch][1].to(self.device)
                for scorer in scorers:
                    scorer.update(index, hidden_in, hidden_out, mask)
                states[batch] = hidden_out.to("cpu")
            self.release_layer(index)
        self.first_outputs = []

    @torch.no_grad()
    def removal_losses(self, removed: Iterable[int], candidates: Iterable[int],
                       desc: str = "removing layers") -> tuple[dict[int, float], float]:
        """Mean calibration NLL of the model without ``removed``, and without ``removed`` plus each candidate.

        Layer-major over cached states: the model without layer ``l`` shares everything before ``l`` with the
        current model, so only the kept layers after ``l`` are re-run (about half a forward pass per candidate).

        Returns:
            ``({candidate: mean nll}, mean nll of the current model)``.
        """
        if self.sequential:
            raise DepthpruneError("removal-based criteria (ppl, sleb) re-run later layers many times and need every "
                                  "layer in memory; score them without --sequential")
        removed = set(removed)
        candidates = set(candidates)
        kept = [i for i in range(self.num_layers) if i not in removed]
        states = self.initial_states()
        totals = {c: [0.0, 0] for c in candidates}
        current = [0.0, 0]
        for position, index in enumerate(self._bar(kept, desc=desc, unit="layer")):
            after = kept[position + 1:]
            for batch, hidden in enumerate(states):
                hidden = hidden.to(self.device)
                if index in candidates:
                    total, count = self.nll(self.run_layers(hidden, batch, after), batch)
                    totals[index][0] += total
                    totals[index][1] += count
                hidden = self.run_layer(index, hidden, batch)
                if position == len(kept) - 1:
                    total, count = self.nll(hidden, batch)
                    current[0] += total
                    current[1] += count
                states[batch] = hidden.to("cpu")
        return {c: t / max(n, 1) for c, (t, n) in totals.items()}, current[0] / max(current[1], 1)

    @torch.no_grad()
    def initial_states(self) -> list[torch.Tensor]:
        """``h[0]`` per batch (captured once and kept for repeated passes such as SLEB's)."""
        if self._initial_states is None:
            self._initial_states = self.capture()
            self.first_outputs = []
        return list(self._initial_states)
