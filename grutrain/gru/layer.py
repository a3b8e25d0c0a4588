"""The GRU layer, written from its equations, with torch.nn.GRU's interface and parameter layout.

Layer functions compute one direction of one layer over a whole sequence:

- ``reference_gru_layer`` (``grutrain.gru.reference``): the equations transcribed step by step,
  the readable definition every other implementation is tested against;
- ``fused_gru_layer`` (``grutrain.gru.fused``): the Python fast path, same signature and results;
- ``native_gru_layer`` (``grutrain.gru.native``): the C++ kernel, built on first use, preferred
  where it is available (else the fused path);

``grutrain.gru.paths`` holds them in a registry and picks one for the context: tracers, compilers
and torch.func get a form of the reference equations they can record (torch.export: its ``scan``).

``GRU`` stacks them into layers and directions exactly like ``torch.nn.GRU``, so state dicts
move between the two and both give the same outputs and gradients.
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from grutrain.gru import native
from grutrain.gru.paths import IMPLS, current_context, is_exporting, select
from grutrain.gru.reference import RESETS, GRUInputError, autocast_enabled, check_reset, one_of, reference_gru_layer

__all__ = ["GRU", "GRUInputError", "RESETS", "IMPLS", "reference_gru_layer"]


class GRU(nn.Module):
    r"""A multi-layer gated recurrent unit (GRU) written from its equations.

    A drop-in for :class:`torch.nn.GRU`: same arguments, inputs, outputs, parameter names,
    shapes and initialisation, so ``state_dict()`` moves between the two in both directions.
    For each element of the input sequence, each layer computes

    .. math::
        \begin{array}{ll}
            r_t = \sigma(x_t W_{ir}^T + b_{ir} + h_{t-1} W_{hr}^T + b_{hr}) \\
            z_t = \sigma(x_t W_{iz}^T + b_{iz} + h_{t-1} W_{hz}^T + b_{hz}) \\
            n_t = \tanh(x_t W_{in}^T + b_{in} + r_t \odot (h_{t-1} W_{hn}^T + b_{hn}))
                  & \text{reset="after"} \\
            n_t = \tanh(x_t W_{in}^T + b_{in} + (r_t \odot h_{t-1}) W_{hn}^T + b_{hn})
                  & \text{reset="before"} \\
            h_t = z_t \odot h_{t-1} + (1 - z_t) \odot n_t
        \end{array}

    where :math:`h_t` is the hidden state at time `t`, :math:`x_t` the input at time `t`,
    :math:`h_{-1}` the initial state, :math:`r_t`, :math:`z_t`, :math:`n_t` the reset, update
    and candidate ("new") gates, :math:`\sigma` the sigmoid and :math:`\odot` the elementwise
    product.

    ``reset="after"`` (the default) is what torch.nn.GRU, cuDNN and Keras
    (``reset_after=True``) compute; ``reset="before"`` is the form of the original paper
    (Cho et al., 2014) and of d2l.ai's from-scratch GRU. The parameters are the same for
    both, so a state dict loads into either, but the outputs differ.

    In a multi-layer GRU the input of layer :math:`l \ge 1` is the output of layer
    :math:`l - 1` (both directions concatenated when bidirectional), passed through dropout
    with probability :attr:`dropout` in training mode.

    Args:
        input_size: The number of features in the input `x`.
        hidden_size: The number of features in the hidden state `h`.
        num_layers: Number of stacked recurrent layers. Default: 1
        bias: If ``False``, the layers have no biases `b_ih`, `b_hh`. Default: ``True``
        batch_first: If ``True``, the input and output tensors are `(batch, seq, feature)`
            instead of `(seq, batch, feature)`. It does not apply to the hidden state, nor to
            unbatched input. Default: ``False``
        dropout: If non-zero, dropout with this probability on the outputs of every layer
            except the last, in training mode only. Default: 0
        bidirectional: If ``True``, a bidirectional GRU. Default: ``False``
        reset: ``"after"`` or ``"before"``, where the reset gate acts (equations above).
            Default: ``"after"``
        impl: ``"native"`` (the C++ kernel, :mod:`grutrain.gru.native`, built on first use;
            where it can't be had, one notice line and the fused path), ``"fused"`` (the Python
            fast path, :mod:`grutrain.gru.fused`) or ``"reference"`` (:func:`reference_gru_layer`,
            the step-by-step transcription), or another implementation registered in
            :mod:`grutrain.gru.paths` (``IMPLS``). All compute the same function. Default: ``"native"``
        device, dtype: where and in which dtype to create the parameters, as in torch.nn.
        proj_size: accepted only as 0, as torch.nn.GRU (projections are LSTM-only).

    Under ``torch.jit.trace``, ``torch.compile``/``torch.export`` and ``torch.func`` transforms
    the module runs the reference equations whatever ``impl`` says (the fused path's kernels
    can't be recorded); a traced module calls them compiled by TorchScript and an exported one
    as torch's ``scan``, so both run at any sequence length. A double backward
    (``create_graph=True``) works on both paths.

    Inputs: input, h_0, lengths
        * **input**: tensor of shape :math:`(L, H_{in})` for unbatched input,
          :math:`(L, N, H_{in})` when ``batch_first=False`` or :math:`(N, L, H_{in})` when
          ``batch_first=True``, the features of the input sequence. A
          :class:`~torch.nn.utils.rnn.PackedSequence` works as with torch.nn.GRU (the output is
          then a PackedSequence too); it runs through ``lengths`` below.
        * **h_0**: tensor of shape :math:`(D * \text{num\_layers}, H_{out})` for unbatched
          input or :math:`(D * \text{num\_layers}, N, H_{out})`, the initial hidden state
          of every layer and direction. Defaults to zeros if not given.
        * **lengths** (keyword, batched input only): integer tensor of shape :math:`(N)`
          with :math:`1 \le \text{lengths}[b] \le L`, for a right-padded batch: sequence
          `b` is ``input[b, :lengths[b]]`` (batch-first) and the rest is padding. The result
          is what torch.nn.GRU gives for the same batch as a packed sequence
          (``pack_padded_sequence``): the padding never changes an output, ``h_n``, or a
          gradient. The forward direction runs as usual and takes ``h_n`` at each
          sequence's last valid step; the backward direction reads each sequence reversed
          within its own length (an index gather), so it starts at the last valid step,
          not at the padding. Output positions at or after ``lengths[b]`` are zeros, as
          ``pad_packed_sequence`` gives them. Defaults to None: every sequence is `L` long.

        where

        .. math::
            \begin{aligned}
                N ={} & \text{batch size} \\
                L ={} & \text{sequence length} \\
                D ={} & 2 \text{ if bidirectional=True otherwise } 1 \\
                H_{in} ={} & \text{input\_size} \\
                H_{out} ={} & \text{hidden\_size}
            \end{aligned}

    Outputs: output, h_n
        * **output**: tensor of shape :math:`(L, D * H_{out})` for unbatched input,
          :math:`(L, N, D * H_{out})` when ``batch_first=False`` or
          :math:`(N, L, D * H_{out})` when ``batch_first=True``, the hidden state of the
          last layer at every step (forward direction first, then backward).
        * **h_n**: tensor of shape :math:`(D * \text{num\_layers}, H_{out})` for unbatched
          input or :math:`(D * \text{num\_layers}, N, H_{out})`, the final hidden state of
          every layer and direction, ordered layer by layer, forward before backward
          (for the backward direction "final" is after reading the first element; with
          ``lengths``, for the forward direction it is after each sequence's last valid step).

    Attributes:
        weight_ih_l[k]: the input-hidden weights of layer `k` (W_ir|W_iz|W_in), of shape
            `(3*hidden_size, input_size)` for `k = 0`, otherwise
            `(3*hidden_size, num_directions * hidden_size)`.
        weight_hh_l[k]: the hidden-hidden weights of layer `k` (W_hr|W_hz|W_hn), of shape
            `(3*hidden_size, hidden_size)`.
        bias_ih_l[k]: the input-hidden bias of layer `k` (b_ir|b_iz|b_in), of shape
            `(3*hidden_size)`.
        bias_hh_l[k]: the hidden-hidden bias of layer `k` (b_hr|b_hz|b_hn), of shape
            `(3*hidden_size)`.
        The backward direction's parameters carry the suffix ``_reverse``
        (e.g. ``weight_ih_l0_reverse``).

    .. note::
        All weights and biases are initialised from :math:`\mathcal{U}(-\sqrt{k}, \sqrt{k})`
        where :math:`k = \frac{1}{\text{hidden\_size}}`, as in torch.nn.GRU.

    Examples::

        >>> rnn = GRU(10, 20, 2)
        >>> input = torch.randn(5, 3, 10)
        >>> h0 = torch.randn(2, 3, 20)
        >>> output, hn = rnn(input, h0)
        >>> output.shape, hn.shape
        (torch.Size([5, 3, 20]), torch.Size([2, 3, 20]))
        >>> output, hn = rnn(input, h0, lengths=torch.tensor([5, 2, 4]))  # right-padded batch
        >>> bool(output[2:, 1].eq(0).all())  # sequence 1 ends after 2 steps: zeros after
        True
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        reset: str = "after",
        impl: str = "native",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        proj_size: int = 0,
    ) -> None:
        super().__init__()
        # Error types as torch.nn.GRU's: TypeError for a wrong type, ValueError for a bad value.
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
            if value <= 0:
                raise GRUInputError(f"{name} must be a positive integer, got {value!r}")
        for name, value in (("bias", bias), ("batch_first", batch_first)):
            if not isinstance(value, bool):  # a string like 'False' would be truthy
                raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
        if not isinstance(dropout, numbers.Number) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise GRUInputError(f"dropout must be a probability in [0, 1], got {dropout!r}")
        if proj_size != 0:
            raise GRUInputError("proj_size argument is only supported for LSTM, not RNN or GRU")
        check_reset(reset)
        if impl not in IMPLS:
            raise GRUInputError(f"impl must be {one_of(IMPLS)}, got {impl!r}")
        if dropout > 0 and num_layers == 1:
            # Same warning as torch.nn.GRU: the dropout would silently do nothing.
            warnings.warn(
                f"dropout acts between recurrent layers, so dropout={dropout} has no effect "
                f"with num_layers=1",
                stacklevel=2,
            )

        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.reset = reset
        self.impl = impl

        factory = {"device": device, "dtype": dtype}
        gate_size = 3 * hidden_size
        # Registration order (layer, then direction, then w_ih, w_hh, b_ih, b_hh) is
        # torch.nn.GRU's, so state_dict() keys come out in the same order.
        for layer in range(num_layers):
            layer_input_size = input_size if layer == 0 else hidden_size * self.num_directions
            for direction in range(self.num_directions):
                names = self._parameter_names(layer, direction)
                shapes = [(gate_size, layer_input_size), (gate_size, hidden_size)]
                if bias:
                    shapes += [(gate_size,), (gate_size,)]
                for name, shape in zip(names, shapes):
                    self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    # torch.nn.RNNBase's surface, for code written against torch.nn.GRU.
    mode = "GRU"
    proj_size = 0

    def flatten_parameters(self) -> None:
        """Does nothing: there is no cuDNN weight buffer to compact (torch.nn.GRU's is for cuDNN)."""

    @property
    def _all_weights(self) -> list[list[str]]:
        """Parameter names per layer and direction, as torch.nn.GRU's ``_all_weights``."""
        return [self._parameter_names(layer, direction)
                for layer in range(self.num_layers) for direction in range(self.num_directions)]

    @property
    def _flat_weights_names(self) -> list[str]:
        return [name for names in self._all_weights for name in names]

    @property
    def _flat_weights(self) -> list[Tensor]:
        return [getattr(self, name) for name in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """The parameters per layer and direction ([w_ih, w_hh, b_ih, b_hh] each), as torch.nn.GRU's."""
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def _parameter_names(self, layer: int, direction: int) -> list[str]:
        suffix = "_reverse" if direction == 1 else ""
        kinds = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if self.bias else [])
        return [f"{kind}_l{layer}{suffix}" for kind in kinds]

    def reset_parameters(self) -> None:
        """Draw every weight and bias from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -bound, bound)

    def _check_input(self, input: Tensor, hx: Tensor | None, batch_first: bool) -> None:
        if input.dim() not in (2, 3):
            raise GRUInputError(
                f"GRU: expected input to be 2-D (unbatched, [seq, feature]) or 3-D (batched), "
                f"got {input.dim()}-D with shape {list(input.shape)}"
            )
        if input.size(-1) != self.input_size:
            raise GRUInputError(
                f"GRU: input.size(-1) must equal input_size={self.input_size}, got {input.size(-1)}"
            )
        weight_dtype = self.weight_ih_l0.dtype
        if input.dtype != weight_dtype and not autocast_enabled(input.device.type):
            raise GRUInputError(
                f"GRU: input dtype ({input.dtype}) does not match weight dtype ({weight_dtype}); "
                f"convert the input with input.to({weight_dtype}) or the model with model.to({input.dtype})"
            )
        is_batched = input.dim() == 3
        seq_len = input.size(1) if is_batched and batch_first else input.size(0)
        if seq_len == 0:
            raise GRUInputError("GRU: expected sequence length to be larger than 0")
        if hx is None:
            return
        if hx.dim() != input.dim():
            kind = "batched 3-D" if is_batched else "unbatched 2-D"
            raise GRUInputError(
                f"GRU: for {kind} input, hx should be {input.dim()}-D, got {hx.dim()}-D "
                f"with shape {list(hx.shape)}"
            )
        if hx.dtype != input.dtype:
            raise GRUInputError(f"GRU: hx dtype ({hx.dtype}) does not match input dtype ({input.dtype})")
        states = self.num_layers * self.num_directions
        if is_batched:
            batch = input.size(0) if batch_first else input.size(1)
            expected = (states, batch, self.hidden_size)
        else:
            expected = (states, self.hidden_size)
        if tuple(hx.shape) != expected:
            raise GRUInputError(
                f"GRU: expected hx of shape {list(expected)} "
                f"(num_layers * num_directions, {'batch, ' if is_batched else ''}hidden_size), "
                f"got {list(hx.shape)}"
            )

    def _check_lengths(self, lengths: Tensor, batch: int, seq_len: int) -> Tensor:
        """lengths as a long tensor [B], checked against the batch size and sequence length."""
        if not isinstance(lengths, Tensor):
            lengths = torch.as_tensor(lengths)
        if lengths.dim() != 1 or lengths.numel() != batch:
            raise GRUInputError(f"GRU: lengths must be 1-D with one entry per sequence ({batch}), "
                             f"got shape {list(lengths.shape)}")
        if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
            raise GRUInputError(f"GRU: lengths must be integers, got {lengths.dtype}")
        # Under torch.export the values are symbols: the exported program takes them as given.
        if batch and not is_exporting() and (int(lengths.min()) < 1 or int(lengths.max()) > seq_len):
            raise GRUInputError(f"GRU: lengths must be between 1 and the sequence length {seq_len}, "
                             f"got {lengths.tolist()}")
        return lengths.long()

    def forward(
        self, input: Tensor | PackedSequence, hx: Tensor | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor | PackedSequence, Tensor]:
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise GRUInputError("GRU: lengths can't be given with a PackedSequence, which holds its own lengths")
            return self._forward_packed(input, hx)
        self._check_input(input, hx, self.batch_first)
        is_batched = input.dim() == 3
        if is_batched:
            x = input.transpose(0, 1) if self.batch_first else input  # [T, B, I]
        else:
            if lengths is not None:
                raise GRUInputError("GRU: lengths needs batched (3-D) input; an unbatched sequence is all valid")
            x = input.unsqueeze(1)  # [T, 1, I]; batch_first doesn't apply to unbatched input
            hx = None if hx is None else hx.unsqueeze(1)  # [L*D, 1, H]
        if lengths is not None:
            lengths = self._check_lengths(lengths, x.size(1), x.size(0))
        output, h_n = self._forward_time_major(x, hx, lengths)
        if not is_batched:
            return output.squeeze(1), h_n.squeeze(1)  # [T, D*H], [L*D, H]
        if self.batch_first:
            output = output.transpose(0, 1)  # [B, T, D*H]
        return output, h_n

    def step(self, input: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One time step, for generation: input [B, I], hx [num_layers, B, H] or None (zeros) ->
        (output [B, H], h_n [num_layers, B, H]), what ``forward`` gives on a one-step sequence.

        Without autograd, the implementation's one-step cell runs (the native kernel's: no
        per-call sequence set-up); otherwise, and for a bidirectional GRU, ``forward`` on one step.
        """
        x = input.unsqueeze(0)  # [1, B, I]
        self._check_input(x, hx, batch_first=False)
        path = select(self.impl, x)
        dropping = self.training and self.dropout > 0 and self.num_layers > 1
        if path.cell is None or torch.is_grad_enabled() or self.bidirectional or dropping:
            output, h_n = self._forward_time_major(x, hx, None)
            return output[0], h_n
        if hx is None:
            hx = x.new_zeros(self.num_layers, x.size(1), self.hidden_size)
        states = []
        for layer in range(self.num_layers):
            weights = [getattr(self, name) for name in self._parameter_names(layer, 0)]
            if not self.bias:
                weights += [None, None]
            input = path.cell(input, hx[layer], *weights, reset=self.reset)
            states.append(input)
        return input, torch.stack(states)

    def native_step_weights(self, h: Tensor) -> list | None:
        """The flat list w_ih, w_hh, b_ih, b_hh (None without bias) of each layer that
        ``native.native_stack_step`` takes, when this GRU's one-token step can run there (the
        native path selected for state h, one direction, no dropout between layers, no grad);
        else None."""
        if self.bidirectional or (self.training and self.dropout > 0 and self.num_layers > 1):
            return None
        # What select(self.impl, h) would pick, checked cheaply (this runs once per generated token).
        if self.impl != "native" or not native.stack_step_supported(h) or current_context() != "eager":
            return None
        params = self._parameters
        return [params[name] if name else None for name in self._step_names()]

    def _step_names(self) -> list:
        """native_step_weights' parameter names, "" for a missing bias (computed once)."""
        names = self.__dict__.get("_step_names_cache")
        if names is None:
            names = []
            for layer in range(self.num_layers):
                names += self._parameter_names(layer, 0) + ([] if self.bias else ["", ""])
            self.__dict__["_step_names_cache"] = names
        return names

    def _forward_packed(self, packed: PackedSequence, hx: Tensor | None) -> tuple[PackedSequence, Tensor]:
        """A PackedSequence in, one out, as torch.nn.GRU: run on the padded batch with its lengths."""
        padded, lengths = pad_packed_sequence(packed)  # [T, B, I] and [B], in the caller's batch order
        self._check_input(padded, hx, batch_first=False)
        output, h_n = self._forward_time_major(padded, hx, lengths)  # h_n in the caller's order, as torch's
        if packed.sorted_indices is not None:  # packed data is laid out longest sequence first
            output = output.index_select(1, packed.sorted_indices)
            lengths = lengths[packed.sorted_indices.cpu()]
        data = pack_padded_sequence(output, lengths).data
        return PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices), h_n

    def _forward_time_major(
        self, x: Tensor, hx: Tensor | None, lengths: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """x [T, B, I], hx [L*D, B, H] or None, lengths [B] (checked) or None -> ([T, B, D*H], [L*D, B, H])."""
        batch = x.size(1)
        if hx is None:
            hx = x.new_zeros(self.num_layers * self.num_directions, batch, self.hidden_size)
        padding = None if lengths is None else _Padding(lengths.to(x.device), x.size(0))
        # The backward direction is the forward recurrence on the reversed sequence (each sequence
        # reversed within its own length when padded); reversing its output back lines step t up
        # with the forward output at t.
        reverse = padding.reverse if padding is not None else (lambda t: t.flip(0))

        path = select(self.impl, x)
        final_states = []  # num_layers * num_directions tensors of [B, H]
        for layer in range(self.num_layers):
            direction_outputs = []  # each [T, B, H]
            for direction in range(self.num_directions):
                weights = [getattr(self, name) for name in self._parameter_names(layer, direction)]
                if not self.bias:
                    weights += [None, None]
                h0 = hx[layer * self.num_directions + direction]  # [B, H]
                out, h_last = path.layer(x if direction == 0 else reverse(x), h0, *weights, reset=self.reset)
                if padding is not None:
                    h_last = padding.last_valid(out)  # each sequence's own end, not the padding's
                if direction == 1:
                    out = reverse(out)
                if padding is not None:
                    out = padding.zero_padding(out)
                direction_outputs.append(out)
                final_states.append(h_last)
            x = torch.cat(direction_outputs, dim=2) if self.bidirectional else direction_outputs[0]  # [T, B, D*H]
            if layer < self.num_layers - 1 and self.dropout > 0:
                x = F.dropout(x, p=self.dropout, training=self.training)

        if path.output_is_saved_state and x.requires_grad and x is direction_outputs[0] and padding is None:
            # The layer's output is the buffer its backward reads the states from; the caller's
            # copy must be theirs to change in place (ReLU(inplace=True), out += ...).
            x = x.clone()
        return x, torch.stack(final_states)  # [T, B, D*H], [L*D, B, H]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        return s + f", reset={self.reset!r}, impl={self.impl!r}"


class _Padding:
    """Index maps of a right-padded batch with `lengths` [B] and T steps.

    Only index gathers around the per-direction layer function, so the fused path stays in use.
    The forward recurrence never looks ahead, so the padding after a sequence's end can only
    reach outputs that are zeroed (and so get no gradient).
    """

    def __init__(self, lengths: Tensor, T: int):
        steps = torch.arange(T, device=lengths.device).unsqueeze(1)  # [T, 1]
        self.valid = (steps < lengths).unsqueeze(2)  # [T, B, 1]
        # The step each position reads in the backward direction: L_b-1-t inside the sequence,
        # t (the padding, left in place) after it. The map is its own inverse.
        self.reverse_index = torch.where(steps < lengths, lengths - 1 - steps, steps)  # [T, B]
        self.last_index = (lengths - 1).view(1, -1, 1)  # [1, B, 1]

    def reverse(self, t: Tensor) -> Tensor:  # t [T, B, F]
        return t.gather(0, self.reverse_index.unsqueeze(2).expand(-1, -1, t.size(2)))

    def last_valid(self, out: Tensor) -> Tensor:  # out [T, B, H] -> [B, H] at each sequence's last step
        return out.gather(0, self.last_index.expand(1, -1, out.size(2))).squeeze(0)

    def zero_padding(self, out: Tensor) -> Tensor:
        return torch.where(self.valid, out, out.new_zeros(()))
