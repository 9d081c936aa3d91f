"""Recurrent networks written from their equations, and a character-level language model.

Vanilla RNN (Elman 1990; the recurrence of Karpathy & Fei-Fei 2015, eq. (13)):

    h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)            (or ReLU instead of tanh)

LSTM (Hochreiter & Schmidhuber 1997 with the forget gate of Gers et al. 2000; the form of Graves 2013 without
peepholes, as torch.nn.LSTM computes it):

    i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)         input gate
    f = sigmoid(W_if x + b_if + W_hf h + b_hf)         forget gate
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)            input modulation (the candidate cell content)
    o = sigmoid(W_io x + b_io + W_ho h + b_ho)         output gate
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)

The four gates' weights are stacked in one [4H, I] matrix in torch's order (i, f, g, o), and every parameter has
torch's name (`weight_ih_l0`, `bias_hh_l1_reverse`, ...), so `load_torch_weights` copies a torch.nn.RNN / nn.LSTM
into these modules and the outputs agree to rounding. Each gate can be switched off (held at 1) to retrace how the
cell was built up: without the forget gate, c_t = c_{t-1} + i * g is the original 1997 cell's constant error
carousel; without the output gate h_t = tanh(c_t); without the input gate every candidate is written.

Training is backpropagation through time. `rnn_bptt` writes the vanilla RNN's backward pass out by hand (the
gradient flowing back through h_{t-1}); the RNN layers themselves use autograd through the unrolled loop. The LSTM
layers run `lstm_bptt`, the same equations made fast for a CPU, where one step's arithmetic is too small to hide
autograd's per-operation cost: the input's share W_ih x_t + b of all steps is one matrix product before the loop,
each step is one [B, H] x [H, 4H] product for the four gates plus a few element-wise operations, and the backward
pass is written out by hand, with W_hh's gradient one product after the loop. The tests check both hand-written
passes against finite differences and the fused LSTM against `LSTMCell` stepped through autograd.

The character model (Karpathy, Johnson & Fei-Fei 2015; Graves 2013) trains on blocks of `seq_length` characters
drawn at random places in the text, each read from a zero state, with *truncated* BPTT: within a block the state
is carried across windows of `bptt` steps but detached between them, so gradients flow back at most `bptt` steps
(Williams & Peng 1990; Sutskever 2013, sec. 2.4), and the engine clips the gradient norm (Pascanu et al. 2013).
Its validation loss is the cross-entropy in nats per character of held-out text (the end of the file).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scenekit.data.text import START_CHAR, STOP_CHAR, TextCorpus, read_text, shakespeare  # noqa: F401
from scenekit.errors import DataError
from scenekit.recipes import Phase, Recipe, option, read_options, stored_options


# ------------------------------------------------------------------------------------------------ cells
class RNNCell(nn.Module):
    """One step of the vanilla RNN: h_t = f(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), f = tanh or ReLU."""

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "tanh", bias: bool = True):
        super().__init__()
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.input_size, self.hidden_size, self.nonlinearity = input_size, hidden_size, nonlinearity
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(hidden_size)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(hidden_size)) if bias else None
        _uniform_init(self, hidden_size)

    def forward(self, x: torch.Tensor, h: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, I], h [B, H] -> h_t [B, H]; `extra` [B, H] is added inside f (DeepImageSent's image term b_v)."""
        pre = F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh)
        if extra is not None:
            pre = pre + extra
        return torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre)


class LSTMCell(nn.Module):
    """One LSTM step from the equations in the module docstring; gates can be switched off (held at 1)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *, input_gate: bool = True,
                 forget_gate: bool = True, output_gate: bool = True):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.input_gate, self.forget_gate, self.output_gate = input_gate, forget_gate, output_gate
        # All four blocks are kept even when a gate is off, so torch's weights always copy over.
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size)) if bias else None
        _uniform_init(self, hidden_size)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        """x [B, I], (h, c) [B, H] each -> (h_t, c_t)."""
        h, c = state
        gates = F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh)  # [B, 4H]
        i, f, g, o = gates.chunk(4, dim=1)                                  # torch's order
        i = torch.sigmoid(i) if self.input_gate else torch.ones_like(i)
        f = torch.sigmoid(f) if self.forget_gate else torch.ones_like(f)
        o = torch.sigmoid(o) if self.output_gate else torch.ones_like(o)
        c_t = f * c + i * torch.tanh(g)
        h_t = o * torch.tanh(c_t)
        return h_t, c_t


def _uniform_init(cell: nn.Module, hidden_size: int) -> None:
    """U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias, torch's default for its recurrent layers."""
    bound = 1.0 / math.sqrt(hidden_size)
    for parameter in cell.parameters():
        nn.init.uniform_(parameter, -bound, bound)


@contextmanager
def one_thread(device: torch.device):
    """Run a loop over time steps on one CPU thread, restoring torch's thread count afterwards.

    One step's operations (a [B, H] x [H, 4H] product, element-wise work on [B, 4H]) are too small to share
    between threads: every split waits until all threads are scheduled, which on a busy machine costs more than
    the arithmetic. Measured on a shared 2-core machine, a training step of the default character model took
    1.3-2.5 CPU-seconds on 2 threads and 0.24 on one. The products before and after the loop keep every thread.
    """
    before = torch.get_num_threads()
    if device.type != "cpu" or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------ layers
class _Recurrent(nn.Module):
    """Stacked, optionally bidirectional recurrence with torch.nn.RNN/LSTM's interface and parameter names.

    Layer l > 0 reads the concatenated outputs of both directions of layer l - 1; the reverse direction reads
    the sequence from its end. Input [T, B, I] ([B, T, I] with batch_first) -> output [T, B, D*H] and the final
    states [L*D, B, H] ordered (layer 0 forward, layer 0 reverse, layer 1 forward, ...), as torch orders them.
    """

    is_lstm = False

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, bidirectional: bool = False, **cell_options):
        super().__init__()
        if num_layers < 1 or hidden_size < 1 or input_size < 1:
            raise ValueError(f"need input_size, hidden_size, num_layers >= 1, got {input_size}, {hidden_size}, "
                             f"{num_layers}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.batch_first, self.bidirectional = batch_first, bidirectional
        self.num_directions = 2 if bidirectional else 1
        self.cells = nn.ModuleList()
        for layer in range(num_layers):
            size = input_size if layer == 0 else hidden_size * self.num_directions
            for _ in range(self.num_directions):
                self.cells.append(self._make_cell(size, hidden_size, bias, **cell_options))

    def _make_cell(self, input_size, hidden_size, bias, **options):
        raise NotImplementedError

    def _zeros(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        return like.new_zeros(self.num_layers * self.num_directions, batch, self.hidden_size)

    def forward(self, inputs: torch.Tensor, state=None):
        if inputs.dim() != 3 or inputs.shape[-1] != self.input_size:
            raise ValueError(f"inputs must be [T, B, {self.input_size}] (batch_first: [B, T, ...]), "
                             f"got {tuple(inputs.shape)}")
        x = inputs.transpose(0, 1) if self.batch_first else inputs              # [T, B, I]
        batch = x.shape[1]
        if state is None:
            state = (self._zeros(batch, x), self._zeros(batch, x)) if self.is_lstm else self._zeros(batch, x)
        finals_h, finals_c = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                k = layer * self.num_directions + direction
                s = (state[0][k], state[1][k]) if self.is_lstm else state[k]
                out, s = self._sequence(self.cells[k], x.flip(0) if direction else x, s)    # [T, B, H]
                outputs.append(out.flip(0) if direction else out)               # the reverse reads from the end
                finals_h.append(s[0] if self.is_lstm else s)
                if self.is_lstm:
                    finals_c.append(s[1])
            x = torch.cat(outputs, dim=2)                                        # [T, B, D*H]
        output = x.transpose(0, 1) if self.batch_first else x
        h_n = torch.stack(finals_h)                                              # [L*D, B, H]
        return (output, (h_n, torch.stack(finals_c))) if self.is_lstm else (output, h_n)

    def _sequence(self, cell, x: torch.Tensor, state):
        """One direction of one layer over the sequence: x [T, B, I] -> (outputs [T, B, H], final state)."""
        raise NotImplementedError


def _input_share(cell, x: torch.Tensor) -> torch.Tensor:
    """W_ih x_t + b_ih + b_hh for every step in one product: [T, B, I] -> [T, B, G*H]. Only the recurrent
    product W_hh h_{t-1} has to wait for the previous step."""
    bias = None if cell.bias_ih is None else cell.bias_ih + cell.bias_hh
    return F.linear(x, cell.weight_ih, bias)


class RNN(_Recurrent):
    """Multi-layer (bidirectional) vanilla RNN of `RNNCell`s; `nonlinearity` "tanh" | "relu"."""

    def _make_cell(self, input_size, hidden_size, bias, nonlinearity="tanh"):
        return RNNCell(input_size, hidden_size, nonlinearity, bias)

    def _sequence(self, cell, x, h):
        activation = torch.tanh if cell.nonlinearity == "tanh" else torch.relu
        xw, w_hh = _input_share(cell, x), cell.weight_hh.t()                   # [T, B, H], [H, H]
        outputs = []
        with one_thread(x.device):
            for t in range(len(x)):
                h = activation(torch.addmm(xw[t], h, w_hh))                     # the step's one product
                outputs.append(h)
        return (torch.stack(outputs) if outputs else x.new_zeros(0, x.shape[1], cell.hidden_size)), h


class LSTM(_Recurrent):
    """Multi-layer (bidirectional) LSTM of `LSTMCell`s; `input_gate/forget_gate/output_gate=False` switch gates off.

    Over a sequence it runs `lstm_bptt`: the cells' equations with the four gates in one [B, H] x [H, 4H] product
    per step and the backward pass written out by hand, the loop on one thread (`one_thread`). The numbers are
    those of stepping `LSTMCell`; a training step of the character model (H = 256, 32 x 128 characters) took
    0.20-0.22 CPU-seconds against 0.29-0.31 for the cell stepped through autograd on one thread, and 0.4-0.55
    against 9-10 on two threads of a busy 2-core machine."""

    is_lstm = True

    def _make_cell(self, input_size, hidden_size, bias, input_gate=True, forget_gate=True, output_gate=True):
        return LSTMCell(input_size, hidden_size, bias, input_gate=input_gate, forget_gate=forget_gate,
                        output_gate=output_gate)

    def _sequence(self, cell, x, state):
        h0, c0 = state
        switches = (cell.input_gate, cell.forget_gate, cell.output_gate)
        out, c_n = lstm_bptt(_input_share(cell, x), h0, c0, cell.weight_hh, switches)   # [T, B, H], [B, H]
        return out, (out[-1] if len(out) else h0, c_n)


def load_torch_weights(module: _Recurrent, reference: nn.RNNBase) -> None:
    """Copy a torch.nn.RNN / nn.LSTM's parameters (`weight_ih_l{k}[_reverse]`, ...) into `module`'s cells."""
    if reference.num_layers != module.num_layers or reference.bidirectional != module.bidirectional \
            or reference.hidden_size != module.hidden_size or reference.input_size != module.input_size:
        raise ValueError("the torch module and ours differ in size, layers or directions")
    with torch.no_grad():
        for layer in range(module.num_layers):
            for direction in range(module.num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                cell = module.cells[layer * module.num_directions + direction]
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    ours = getattr(cell, name)
                    if ours is not None:
                        ours.copy_(getattr(reference, name + suffix))


# ------------------------------------------------------------------------------------------------ hand-written BPTT
class VanillaRNNBPTT(torch.autograd.Function):
    """h_t = tanh(x_t W_x + h_{t-1} W_h + b) over a whole sequence, with the backward pass written out by hand.

    Backpropagation through time (Werbos 1990): walking t = T..1, the gradient reaching h_t is the loss's own
    plus what flows back from step t + 1; through tanh it becomes da_t = dh_t * (1 - h_t^2), and then
    dW_x += x_t^T da_t, dW_h += h_{t-1}^T da_t, db += sum da_t, dx_t = da_t W_x^T and dh_{t-1} = da_t W_h^T.
    Shapes: x [B, T, D], h0 [B, H], W_x [D, H], W_h [H, H], b [H] -> h [B, T, H].
    """

    @staticmethod
    def forward(ctx, x, h0, w_x, w_h, b):
        steps = x.shape[1]
        hs, h = [], h0
        for t in range(steps):
            h = torch.tanh(x[:, t] @ w_x + h @ w_h + b)
            hs.append(h)
        h_all = torch.stack(hs, dim=1) if steps else x.new_zeros(x.shape[0], 0, h0.shape[1])
        ctx.save_for_backward(x, h0, w_x, w_h, h_all)
        return h_all

    @staticmethod
    def backward(ctx, grad_h):
        x, h0, w_x, w_h, h_all = ctx.saved_tensors
        dx = torch.zeros_like(x)
        dw_x, dw_h = torch.zeros_like(w_x), torch.zeros_like(w_h)
        db = torch.zeros_like(w_h[0])
        dh_next = torch.zeros_like(h0)
        for t in range(x.shape[1] - 1, -1, -1):
            h_prev = h_all[:, t - 1] if t > 0 else h0
            da = (grad_h[:, t] + dh_next) * (1 - h_all[:, t] ** 2)       # back through tanh
            dx[:, t] = da @ w_x.T
            dw_x += x[:, t].T @ da
            dw_h += h_prev.T @ da
            db += da.sum(dim=0)
            dh_next = da @ w_h.T                                          # on to step t - 1
        return dx, dh_next, dw_x, dw_h, db


def rnn_bptt(x, h0, w_x, w_h, b) -> torch.Tensor:
    """The vanilla RNN over a sequence with hand-written BPTT (see `VanillaRNNBPTT`): [B, T, D] -> [B, T, H]."""
    return VanillaRNNBPTT.apply(x, h0, w_x, w_h, b)


class LSTMBPTT(torch.autograd.Function):
    """The LSTM of the module docstring over a whole sequence, the backward pass written out by hand.

    The input's share of the gates, W_ih x_t + b_ih + b_hh, arrives computed for all steps (`_input_share`), so a
    step is one product h_{t-1} W_hh^T for all four gates [B, 4H] and a few element-wise operations. Backward walks
    t = T..1 with dh the gradient reaching h_t (the loss's own plus what flows back from step t + 1) and dc the one
    reaching c_t; by the chain rule through the equations (Graves 2013, sec. 2; Greff et al. 2017, appendix):

        do = dh * tanh(c_t)              dc += dh * o * (1 - tanh(c_t)^2)
        di = dc * g     df = dc * c_{t-1}     dg = dc * i          then dc_{t-1} = dc * f
        da = [di i (1 - i), df f (1 - f), dg (1 - g^2), do o (1 - o)]     at the pre-activations [B, 4H]
        dh_{t-1} = da W_hh                dW_hh = sum_t da_t^T h_{t-1}     (one product after the loop)

    and da is also the gradient of the input's share, which autograd carries on into W_ih, the biases and x. A gate
    switched off is held at 1, so its block of da is 0. Both tanh are computed as tanh(a) = 2 sigmoid(2a) - 1:
    torch's CPU tanh costs several times its sigmoid, and with the g rows of W_hh doubled once per sequence the
    four gates take one sigmoid. Shapes: xw [T, B, 4H], h0 and c0 [B, H], w_hh [4H, H], switches (input, forget,
    output gate on) -> (h_1..h_T [T, B, H], c_T [B, H]).
    """

    @staticmethod
    def forward(ctx, xw, h0, c0, w_hh, switches):
        steps, batch, width = xw.shape
        hidden = width // 4
        g_block = slice(2 * hidden, 3 * hidden)
        off = [slice(k * hidden, (k + 1) * hidden) for k, on in zip((0, 1, 3), switches) if not on]
        gates = xw.new_empty(steps, batch, width)                  # i, f, g, o after their nonlinearities
        cells = xw.new_empty(steps + 1, batch, hidden)             # c_0 .. c_T
        hs = xw.new_empty(steps + 1, batch, hidden)                # h_0 .. h_T
        tanh_c = xw.new_empty(steps, batch, hidden)
        cells[0], hs[0] = c0, h0
        w_t = w_hh.t().clone()
        w_t[:, g_block] *= 2
        with one_thread(xw.device):
            for t in range(steps):
                pre = torch.addmm(xw[t], hs[t], w_t)               # [B, 4H]: all four gates in one product
                pre[:, g_block] += xw[t, :, g_block]               # 2a for g, whose tanh is 2 sigmoid(2a) - 1
                gate = gates[t]
                torch.sigmoid(pre, out=gate)
                gate[:, g_block].mul_(2).sub_(1)
                for block in off:
                    gate[:, block] = 1.0
                i, f, g, o = gate.chunk(4, dim=1)
                torch.addcmul(f * cells[t], i, g, out=cells[t + 1])    # c_t = f c_{t-1} + i g
                torch.sigmoid(cells[t + 1] * 2, out=tanh_c[t]).mul_(2).sub_(1)
                torch.mul(o, tanh_c[t], out=hs[t + 1])             # h_t = o tanh(c_t)
        ctx.save_for_backward(gates, cells, hs, tanh_c, w_hh)
        ctx.off = off
        return hs[1:].clone(), cells[-1].clone()

    @staticmethod
    def backward(ctx, grad_h, grad_c):
        gates, cells, hs, tanh_c, w_hh = ctx.saved_tensors
        steps, batch, width = gates.shape
        hidden = width // 4
        g_block = slice(2 * hidden, 3 * hidden)
        one = gates.new_ones(batch, hidden)
        da = torch.empty_like(gates)                               # gradient at the pre-activations, every step
        slope = gates.new_empty(batch, width)
        dh = torch.zeros_like(hs[0])
        dc = grad_c.clone() if grad_c is not None else torch.zeros_like(cells[0])
        with one_thread(gates.device):
            for t in range(steps - 1, -1, -1):
                if grad_h is not None:
                    dh = dh + grad_h[t]
                gate, tc = gates[t], tanh_c[t]
                i, f, g, o = gate.chunk(4, dim=1)
                di, df, dg, do = da[t].chunk(4, dim=1)
                torch.mul(dh, tc, out=do)
                dc = torch.addcmul(dc, dh * o, torch.addcmul(one, tc, tc, value=-1))
                torch.mul(dc, g, out=di)
                torch.mul(dc, cells[t], out=df)
                torch.mul(dc, i, out=dg)
                torch.addcmul(gate, gate, gate, value=-1, out=slope)      # s (1 - s) for the sigmoids ...
                torch.addcmul(one, g, g, value=-1, out=slope[:, g_block])  # ... and 1 - g^2 for tanh
                for block in ctx.off:
                    slope[:, block] = 0.0
                da[t].mul_(slope)
                dc = dc * f                                        # on to c_{t-1}
                dh = da[t] @ w_hh                                  # on to h_{t-1}
        dw_hh = da.reshape(-1, width).t() @ hs[:-1].reshape(-1, hidden)
        return da, dh, dc, dw_hh, None


def lstm_bptt(xw, h0, c0, w_hh, switches=(True, True, True)):
    """The LSTM over a sequence with hand-written BPTT (see `LSTMBPTT`): [T, B, 4H] -> ([T, B, H], c_T [B, H])."""
    return LSTMBPTT.apply(xw, h0, c0, w_hh, tuple(switches))


class CharVocabulary:
    """The characters of any text as UTF-8 bytes: id 0 is START, 1 is STOP, 2 + b is byte b (258 ids).

    A fixed byte alphabet, rather than the characters of one text (Karpathy's char-rnn), lets one model read
    any file and makes the vocabulary independent of the data, so a checkpoint needs nothing but its weights.
    """

    start_id, stop_id, size = 0, 1, 258

    def __len__(self) -> int:
        return self.size

    def encode(self, text: str) -> torch.Tensor:
        """Text -> byte ids [n]; the START/STOP characters of a TextCorpus become the START/STOP ids."""
        ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64) + 2   # a 5 MB text: 0.1 s
        ids[ids == 2 + ord(START_CHAR)] = self.start_id
        ids[ids == 2 + ord(STOP_CHAR)] = self.stop_id
        return torch.from_numpy(ids)

    def decode(self, ids) -> str:
        """Byte ids -> text (START/STOP dropped; an invalid UTF-8 sequence becomes U+FFFD)."""
        return bytes(int(i) - 2 for i in ids if int(i) > 1).decode("utf-8", errors="replace")


# ------------------------------------------------------------------------------------------------ char model
@dataclass
class CharLMConfig:
    hidden: int = 256
    layers: int = 1
    embedding: int = 64
    bptt: int = 128               # truncate backpropagation every this many steps
    cell: str = "lstm"            # "lstm" | "rnn"
    dropout: float = 0.0


class CharLM(nn.Module):
    """Character-level language model (Karpathy, Johnson & Fei-Fei 2015; Graves 2013): embedding -> stacked
    LSTM (or RNN) -> linear -> softmax over the next character."""

    def __init__(self, config: CharLMConfig):
        super().__init__()
        if config.cell not in ("lstm", "rnn"):
            raise ValueError(f"cell must be 'lstm' or 'rnn', got {config.cell!r}")
        if config.bptt < 1:
            raise ValueError(f"bptt must be >= 1, got {config.bptt}")
        self.config = config
        self.vocabulary = CharVocabulary()
        self.embed = nn.Embedding(len(self.vocabulary), config.embedding)
        kind = LSTM if config.cell == "lstm" else RNN
        self.rnn = kind(config.embedding, config.hidden, num_layers=config.layers)      # time-major inside
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden, len(self.vocabulary))

    def step_logits(self, ids: torch.Tensor, state=None):
        """ids [B, T] -> next-character logits [B, T, V] and the final state."""
        logits, state = self._read(ids.t(), state)
        return logits.transpose(0, 1), state

    def _read(self, ids: torch.Tensor, state=None):
        """ids [T, B] -> logits [T, B, V], final state: time-major, so every step's slice is contiguous."""
        out, state = self.rnn(self.embed(ids), state)                            # [T, B, H]
        return self.head(self.drop(out)), state

    def forward(self, ids: torch.Tensor, targets: dict | None = None):
        """ids [B, T] -> logits [B, T, V]; with targets {"next": [B, T]}, the cross-entropy under truncated BPTT.

        The sequence is cut into windows of `bptt` steps; the state passes from one window to the next but is
        detached, so no gradient flows back further than `bptt` steps. The loss is the mean over the characters
        in nats (natural log), the unit of the validation loss.
        """
        if targets is None:
            return self.step_logits(ids)[0]
        ids, nexts = ids.t(), targets["next"].t()                               # [T, B]
        losses, state = [], None
        for start in range(0, len(ids), self.config.bptt):
            if state is not None:
                state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
            logits, state = self._read(ids[start:start + self.config.bptt], state)
            nxt = nexts[start:start + self.config.bptt]
            losses.append(F.cross_entropy(logits.flatten(0, 1), nxt.flatten(), reduction="sum"))
        return {"cross_entropy": torch.stack(losses).sum() / nexts.numel()}


@torch.no_grad()
def sample_text(model: CharLM, length: int = 500, temperature: float = 1.0, prime: str = "",
                generator: torch.Generator | None = None, stop_at_end: bool = True) -> str:
    """Sample up to `length` characters after START + `prime`, drawing from softmax(logits / temperature).

    Temperature below 1 sharpens the distribution (more likely, more repetitive text), above 1 flattens it;
    0 is greedy (argmax). Sampling stops at STOP when `stop_at_end`.
    """
    if temperature < 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    model.eval()
    device = next(model.parameters()).device
    vocabulary = model.vocabulary
    ids = torch.cat([torch.tensor([vocabulary.start_id]), vocabulary.encode(prime)]).to(device)
    logits, state = model.step_logits(ids[None])
    out = []
    with one_thread(device):                                    # one character at a time: tiny operations
        for _ in range(length):
            last = logits[0, -1].float()
            if temperature == 0:
                token = int(last.argmax())
            else:
                probabilities = torch.softmax(last / temperature, dim=0).cpu()
                token = int(torch.multinomial(probabilities, 1, generator=generator))
            if token == vocabulary.stop_id and stop_at_end:
                break
            out.append(token)
            logits, state = model.step_logits(torch.tensor([[token]], device=device), state)
    return prime + vocabulary.decode(out)


class CharBlocks(torch.utils.data.Dataset):
    """An epoch of `count` blocks of `length` + 1 consecutive characters, each at a random place in the text:
    item (ids [length], {"next": the same characters shifted by one}).

    Fixed-size epochs of sampled blocks (nanoGPT's `get_batch`) rather than one pass over the text: an epoch takes
    the same time on any text, so the engine's ETA means something and validation comes at a steady rhythm. The
    offsets are drawn from torch's global generator, which the engine seeds and checkpoints, so a run is
    reproducible and resumes where it stopped; the item index only counts the blocks.
    """

    def __init__(self, ids: torch.Tensor, length: int, count: int):
        if length < 1 or count < 1:
            raise ValueError(f"need block length and count >= 1, got {length}, {count}")
        if len(ids) < length + 1:
            raise DataError(f"the text has {len(ids)} characters, fewer than one block of {length + 1}",
                            field="data")
        self.ids, self.length, self.count = ids, length, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        start = int(torch.randint(len(self.ids) - self.length, ()))
        block = self.ids[start:start + self.length + 1]
        return block[:-1], {"next": block[1:]}


def _collate_chunks(batch):
    return torch.stack([x for x, _ in batch]), {"next": torch.stack([t["next"] for _, t in batch])}


@torch.no_grad()
def evaluate_char_lm(model: CharLM, corpus: TextCorpus, device, length: int = 128, batch_size: int = 32) -> dict:
    """Cross-entropy of `corpus` in nats per character ("val_loss") and bits per character ("val_bpc").

    The text is cut into consecutive blocks of `length` characters (the rest is dropped), each read from a zero
    state, as the model trains and as nanoGPT scores its blocks; every character of a block is predicted from the
    ones before it in the block. A character of several UTF-8 bytes costs the sum of its bytes' losses, so the
    figures are per character even where the model reads bytes.
    """
    model.eval()
    ids = model.vocabulary.encode(corpus.text)
    count = (len(ids) - 1) // length
    if count < 1:
        raise DataError(f"the validation text has {len(ids)} characters, fewer than one block of {length + 1}",
                        field="data")
    inputs = ids[:count * length].view(count, length).t()                      # [T, N]
    nexts = ids[1:count * length + 1].view(count, length).t()
    total = 0.0
    for start in range(0, count, batch_size):
        logits, _ = model._read(inputs[:, start:start + batch_size].to(device))   # [T, b, V]
        total += float(F.cross_entropy(logits.flatten(0, 1).float(), nexts[:, start:start + batch_size].flatten()
                                       .to(device), reduction="sum"))
    continuation = (nexts >= 2 + 0x80) & (nexts < 2 + 0xC0)                   # UTF-8 bytes 10xxxxxx
    nats = total / max(1, int((~continuation).sum()))
    return {"val_loss": nats, "val_bpc": nats / math.log(2)}


@dataclass
class CharLMOptions:
    """The character model's options (`char_lm_recipe`; `scenekit train charlm --option KEY=VALUE`)."""

    hidden: int = option(256, "recurrent cells a layer")
    layers: int = option(1, "stacked recurrent layers")
    embedding: int = option(64, "size of a character's embedding")
    bptt: int = option(128, "truncate backpropagation through time every this many characters")
    seq_length: int = option(128, "characters a training or validation block")
    cell: str = option("lstm", "recurrent cell: lstm | rnn")
    dropout: float = option(0.0, "dropout probability on the recurrent outputs (0: none)")
    epochs: int | None = option(None, "training epochs (None: 10)")
    lr: float | None = option(None, "Adam's learning rate after the warm-up (None: 4e-3)")
    clip: float = option(1.0, "largest gradient norm (L2 over all parameters)")
    blocks_per_epoch: int = option(4096, "blocks of seq_length characters an epoch")
    warmup: int = option(100, "linear learning-rate warm-up, steps")


def char_lm_recipe(categories=None, *, name: str = "charlm", **options) -> Recipe:
    """Recipe of the character model (options: `CharLMOptions`): blocks of `seq_length` characters at random places
    in the text, Adam with a linear warm-up over `warmup` steps and a cosine decay, gradient-norm clipping,
    truncated BPTT (`bptt`).

    Train on `--data text:FILE` or `--data text:shakespeare` (the bundled plays); the vocabulary is the fixed
    byte alphabet, so any text fits any model. An epoch is `blocks_per_epoch` blocks (see `CharBlocks`).

    The defaults learn Shakespeare in minutes on a CPU (benchmarks/charlm.py): 1.86 nats per character on the
    held-out plays after 2.6 M characters (epoch 5, 138 training CPU-seconds on one thread), 1.81 at the end
    (276 CPU-seconds). One LSTM layer of 256 cells (within the 64-512 cells, 1-3 layers that Karpathy et al. 2015
    compare; 2 layers or 512 cells cost 2-3 times as much a character), blocks of 128 characters with
    backpropagation through the whole block, 32 blocks a step (4,096 characters, char-rnn's 50 x 50 scaled to the
    block), Adam at 4e-3 after a warm-up of 100 steps with a cosine decay (2e-3 trailed by ~0.1 nats at the same
    step), the gradient norm clipped at 1 (nanoGPT's), and 10 epochs of 4,096 blocks: 1,280 steps, 5.2 M
    characters (1.2 passes over the plays' training split), about half a CPU-minute an epoch.
    """
    o = read_options(CharLMOptions, options, name)
    config = CharLMConfig(hidden=o.hidden, layers=o.layers, embedding=o.embedding, bptt=o.bptt, cell=o.cell,
                          dropout=o.dropout)
    phases = [Phase("train", epochs=10 if o.epochs is None else o.epochs, lr=4e-3 if o.lr is None else o.lr,
                    optimizer="adam", schedule="cosine", warmup_steps=o.warmup, clip_grad_norm=o.clip)]

    def make_dataset(data, train):
        return CharBlocks(CharVocabulary().encode(_as_corpus(data, train).text), o.seq_length, o.blocks_per_epoch)

    return Recipe(model_name=name, categories={}, options=stored_options(o), model_config=asdict(config),
                  build_model=lambda model_config: CharLM(CharLMConfig(**model_config)), phases=phases,
                  make_dataset=make_dataset, collate=_collate_chunks,
                  evaluate=lambda model, data, device: evaluate_char_lm(model, _as_corpus(data, False), device,
                                                                        length=o.seq_length),
                  predict=_no_boxes, best_metric="val_loss", best_mode="min", batch_size=32)


def _as_corpus(data, train: bool) -> TextCorpus:
    """A TextCorpus as is; a captioned Dataset (the world) as its captions, one document each."""
    if isinstance(data, TextCorpus):
        return data
    captions = [c for record in getattr(data, "records", []) for c in record.captions]
    if not captions:
        raise DataError("the character model needs text: --data text:FILE or text:shakespeare", field="data")
    return TextCorpus.from_documents(captions, name="captions")


def _no_boxes(model, images, device):
    raise DataError("a language model does not predict boxes; use `scenekit sample`", field="checkpoint")
