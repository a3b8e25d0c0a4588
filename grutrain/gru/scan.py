"""grutrain's GRU with its time loop as torch's `scan`, for torch.export (`grutrain export --format pt2`).

grutrain's GRU runs its time loop in Python, which a tracer unrolls to the example's length;
`scan` stays one operator over a dynamic number of steps, so the exported program takes any
sequence length.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from grutrain.gru.reference import scan_layer


def scan_gru_layer(*args, **kwargs) -> tuple[Tensor, Tensor]:
    """reference.scan_layer (the reference equations with the time loop as `scan`); the caller checks
    `scan_available()` first (export refuses pt2 in one line on a torch without scan)."""
    return scan_layer(*args, **kwargs)


class ScanGRU(nn.Module):
    """grutrain's GRU (batch-first, eval mode) for torch.export: same parameters and results, with the
    time loop as `scan` so the exported program takes any sequence length.

    With `lengths` ([B], right-padded batches) it gives what grutrain's GRU gives: h_n at each
    sequence's last step, the backward direction reading each sequence reversed within its own
    length, and zeros after each end.
    """

    def __init__(self, gru: nn.Module, reset: str):
        super().__init__()
        if not gru.batch_first:
            raise ValueError("ScanGRU is for batch-first GRUs")
        self.input_size, self.hidden_size, self.num_layers = gru.input_size, gru.hidden_size, gru.num_layers
        self.bidirectional, self.batch_first = gru.bidirectional, True
        self.num_directions = 2 if gru.bidirectional else 1
        self.bias, self.reset = gru.bias, reset
        for name, value in gru.state_dict().items():
            self.register_parameter(name, nn.Parameter(value.detach().clone(), requires_grad=False))

    def _weights(self, layer: int, direction: int) -> list[Tensor | None]:
        suffix = "_reverse" if direction else ""
        names = [f"{kind}_l{layer}{suffix}" for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        return [getattr(self, name) if self.bias or i < 2 else None for i, name in enumerate(names)]

    def forward(self, input: Tensor, hx: Tensor | None = None, lengths: Tensor | None = None):
        x = input.transpose(0, 1)  # [T, B, I]
        T, batch = x.shape[0], x.shape[1]
        if hx is None:
            hx = x.new_zeros(self.num_layers * self.num_directions, batch, self.hidden_size)
        if lengths is not None:
            lengths = lengths.to(x.device).long()
            steps = torch.arange(T, device=x.device).unsqueeze(1)  # [T, 1]
            valid = steps < lengths  # [T, B]
            reverse_index = torch.where(valid, lengths - 1 - steps, steps)  # [T, B], its own inverse
            last_step = (lengths - 1).view(1, batch, 1).expand(1, batch, self.hidden_size)  # [1, B, H]

        def gather_steps(t: Tensor, index: Tensor) -> Tensor:  # t [T, B, F], index [T, B]
            return t.gather(0, index.unsqueeze(2).expand(-1, -1, t.size(2)))

        finals = []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                h0 = hx[layer * self.num_directions + direction]
                weights = self._weights(layer, direction)
                if lengths is None:
                    source = x.flip(0) if direction else x
                    out, h_last = scan_gru_layer(source, h0, *weights, reset=self.reset)
                    out = out.flip(0) if direction else out
                else:
                    source = gather_steps(x, reverse_index) if direction else x
                    out, _ = scan_gru_layer(source, h0, *weights, reset=self.reset)
                    h_last = out.gather(0, last_step).squeeze(0)
                    out = gather_steps(out, reverse_index) if direction else out
                    out = torch.where(valid.unsqueeze(2), out, out.new_zeros(()))
                outputs.append(out)
                finals.append(h_last)
            x = torch.cat(outputs, dim=2) if self.num_directions == 2 else outputs[0]  # [T, B, D*H]
        return x.transpose(0, 1), torch.stack(finals)
