"""The model of every task: token embedding, one-hot or raw features -> GRU -> a linear head."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from grutrain.config.schema import ModelConfig
from grutrain.errors import GrutrainError
from grutrain.gru import native
from grutrain.gru.layer import GRU

# model.kernel -> the GRU implementation asked for; "native" falls back to "fused" where it can't run.
KERNEL_IMPLS = {"auto": "native", "native": "native", "python": "fused"}


def check_kernel(cfg: ModelConfig, device: torch.device) -> None:
    """model.kernel=native insists: a one-line error when the native kernel can't run on `device`
    (auto falls back to the Python fused path with one notice line instead)."""
    if cfg.backend != "custom" or cfg.kernel != "native":
        return
    if not native.load():
        raise GrutrainError(f"model.kernel=native: the native GRU kernel is unavailable ({native.reason()}); "
                            "fix that, or use model.kernel=auto (the Python path where native can't run)")
    if not native.supports(torch.empty(1, 1, 1, device=device)):
        raise GrutrainError(f"model.kernel=native: the native GRU kernel has no {device.type} implementation; "
                            "use model.kernel=auto (the Python fused path there)")


class _DropoutMask(torch.autograd.Function):
    """x * keep * scale, keep saved as bool (as torch's native_dropout does)."""

    @staticmethod
    def forward(ctx, x, keep, scale):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x.mul(keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return torch.ops.aten.native_dropout_backward(grad, keep, ctx.scale), None, None


class Dropout(nn.Dropout):
    """nn.Dropout with a cheaper mask on CPU. torch draws the mask with one 64-bit random number
    and a double comparison per element, single-threaded (~8 ms of a charlm training step, as much
    as a sixth of it); here each 64-bit number gives four 16-bit lanes: an element is dropped when
    its lane is among the lowest k = round(p * 65536) of 65536 values, and the kept ones are scaled
    by 65536 / (65536 - k), so the output's expectation is exactly the input (p itself is rounded
    to 1/65536). Same generator (seeded by train.seed), same result in eval mode; other devices
    and p in {0, 1} take nn.Dropout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dropped = round(self.p * 65536)
        if not self.training or x.device.type != "cpu" or not 0 < dropped < 65536 or self.inplace:
            return super().forward(x)
        n = x.numel()
        lanes = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None).view(torch.int16)
        keep = (lanes[:n] >= dropped - 32768).view(x.shape)
        return _DropoutMask.apply(x, keep, 65536 / (65536 - dropped))


class SequenceModel(nn.Module):
    """Input (token embedding, or the raw features of each step) -> GRU -> a linear head.

    per_step=True puts the head on every step's output ([B, T, output_size]: the language model,
    whose head covers the vocabulary, and the copy task);
    per_step=False on the state after each sequence's last step ([B, output_size]: forecasting,
    classification, the adding problem). `lengths` ([B], for right-padded batches) makes the
    last step each sequence's own, so padding never changes a prediction.
    """

    def __init__(self, cfg: ModelConfig, output_size: int, *, vocab_size: int | None = None,
                 input_size: int | None = None, per_step: bool = False):
        super().__init__()
        if (vocab_size is None) == (input_size is None):
            raise ValueError("give vocab_size (token inputs) or input_size (feature inputs)")
        self.vocab_size, self.per_step = vocab_size, per_step
        self.embedding = None
        if vocab_size is not None:
            self.embedding = nn.Embedding(vocab_size, cfg.embedding_dim) if cfg.embedding_dim > 0 else None
            input_size = cfg.embedding_dim or vocab_size
        gru_args = dict(input_size=input_size, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                        dropout=cfg.dropout if cfg.num_layers > 1 else 0.0, batch_first=True,
                        bidirectional=cfg.bidirectional)
        if cfg.backend == "torch":
            self.gru = nn.GRU(**gru_args)
        else:
            self.gru = GRU(**gru_args, reset=cfg.reset, impl=KERNEL_IMPLS[cfg.kernel])
        self.directions = 2 if cfg.bidirectional else 1
        self.dropout = Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden_size * self.directions, output_size)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.vocab_size is None:
            return x  # [B, T, I] features
        if self.embedding is not None:
            return self.embedding(x)  # [B, T, E]
        return F.one_hot(x, self.vocab_size).to(self.head.weight.dtype)  # [B, T, V]

    def step(self, x: torch.Tensor, hidden: torch.Tensor | None = None):
        """One step of generation: x [B] tokens (or [B, I] features) -> (output [B, output_size],
        hidden [L*D, B, H]); grutrain's GRU runs its one-step cell (the native kernel's) there,
        in eval mode the whole step (embedding, every layer, head) as one native call."""
        fast = self._native_step(x, hidden)
        if fast is not None:
            return fast
        inputs = self.encode(x[:, None])[:, 0]  # [B, E]
        if isinstance(self.gru, GRU):
            output, hidden = self.gru.step(inputs, hidden)  # [B, D*H]
        else:
            output, hidden = self.gru(inputs[:, None], hidden)
            output = output[:, 0]
        return self.head(self.dropout(output)), hidden

    def _native_step(self, x: torch.Tensor, hidden: torch.Tensor | None):
        """step() as one native call (native.native_stack_step), or None where it can't run:
        training mode, a Python path, one-hot inputs, grad, autocast, another device or dtype.
        Reads submodules and parameters from their dicts: nn.Module attribute lookups would cost
        as much as the step's arithmetic."""
        modules = self._modules
        gru, embedding, head = modules["gru"], modules.get("embedding"), modules["head"]  # None: not in _modules
        if self.training or not isinstance(gru, GRU) or (self.vocab_size is not None and embedding is None):
            return None
        head_weight = head._parameters["weight"]
        if hidden is None:
            hidden = head_weight.new_zeros(gru.num_layers, x.size(0), gru.hidden_size)
        weights = gru.native_step_weights(hidden)
        if (weights is None or hidden.dtype != head_weight.dtype
                or x.dtype != (hidden.dtype if embedding is None else torch.long)):
            return None
        table = None if embedding is None else embedding._parameters["weight"]
        return native.native_stack_step(x, hidden, weights, table, head_weight, head._parameters["bias"], gru.reset)

    def forward(self, x: torch.Tensor, hidden: torch.Tensor | None = None, lengths: torch.Tensor | None = None):
        """x: [B, T] tokens or [B, T, I] features -> (output, hidden [L*D, B, H])."""
        inputs = self.encode(x)
        if lengths is None:
            output, hidden = self.gru(inputs, hidden)  # output [B, T, D*H]
        elif isinstance(self.gru, nn.GRU):
            packed = nn.utils.rnn.pack_padded_sequence(inputs, lengths.cpu(), batch_first=True, enforce_sorted=False)
            output, hidden = self.gru(packed, hidden)
            output, _ = nn.utils.rnn.pad_packed_sequence(output, batch_first=True, total_length=inputs.shape[1])
        else:
            output, hidden = self.gru(inputs, hidden, lengths=lengths)
        if self.per_step:
            return self.head(self.dropout(output)), hidden
        # The last layer's final state of each direction: [B, D*H]; with lengths, at each sequence's end.
        last = torch.cat([hidden[-self.directions + d] for d in range(self.directions)], dim=-1)
        return self.head(self.dropout(last)), hidden
