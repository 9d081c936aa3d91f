"""Recurrent models step by step: the character LSTM (gate activations per character), the three captioners
(DeepImageSent, Show and Tell, Show Attend and Tell: how the image enters, attention and the gating scalar per
word, the next-word distributions, beam search) and VQA (the attention at every word of the question, the
answer scores).

The models run as they always do (`greedy_decode`, `answer_question`, `step_logits`); forward hooks on their
cells and layers record what each step computed. LSTM gates are computed from the hooked cell's inputs and its own
weights, with the cell's equations, and checked against the cell's output.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from scenekit.data.transforms import prepare_image
from scenekit.models.captioner import beam_search, greedy_decode
from scenekit.models.language import LSTMCell
from scenekit.models.vqa import answer_question, encode_question
from scenekit.trace.pictures import (BLACK, WHITE, bars, blend, class_map_picture, draw_grid, enlarge, font, labelled,
                                     legend, matrix, ramp, sheet, side_by_side, stacked, text_picture)
from scenekit.trace.report import Step
from scenekit.viz import colour_for, draw_attention, draw_caption

KARPATHY_LSTM = "Karpathy, Johnson & Fei-Fei 2015"
DEFAULT_TEXT = "a red circle left of a blue square, and a green star."
DEFAULT_QUESTION = "what colour is the circle?"
DEFAULT_CHOICES = ["red", "green", "blue", "white"]


@contextmanager
def recording(module):
    """Every call of `module` while the block runs, as (positional args, output)."""
    calls = []
    handle = module.register_forward_hook(lambda _, args, output: calls.append((args, output)))
    try:
        yield calls
    finally:
        handle.remove()


def lstm_gates(cell: LSTMCell, x: torch.Tensor, state) -> dict:
    """One step's gates from the cell's weights and the equations `LSTMCell.forward` computes (torch's order
    i, f, g, o; a gate switched off is held at 1) -> {"i", "f", "g", "o", "c", "h"}, each [B, H]."""
    h, c = state
    gates = F.linear(x, cell.weight_ih, cell.bias_ih) + F.linear(h, cell.weight_hh, cell.bias_hh)
    i, f, g, o = gates.chunk(4, dim=1)
    i = torch.sigmoid(i) if cell.input_gate else torch.ones_like(i)
    f = torch.sigmoid(f) if cell.forget_gate else torch.ones_like(f)
    o = torch.sigmoid(o) if cell.output_gate else torch.ones_like(o)
    g = torch.tanh(g)
    c_t = f * c + i * g
    return {"i": i, "f": f, "g": g, "o": o, "c": c_t, "h": o * torch.tanh(c_t)}


def gates_over_time(calls, cell: LSTMCell) -> dict:
    """The hooked calls of an LSTM cell (batch row 0) -> {gate: [H, T]}, checked against the cell's outputs."""
    steps = []
    for args, (h_out, c_out) in calls:
        gates = lstm_gates(cell, args[0], args[1])
        if not torch.allclose(gates["c"], c_out, atol=1e-5) or not torch.allclose(gates["h"], h_out, atol=1e-5):
            raise AssertionError("the gates recomputed from the LSTM cell's weights do not reproduce its output")
        steps.append({k: v[0].float().cpu() for k, v in gates.items()})
    return {k: torch.stack([s[k] for s in steps], dim=1).numpy() for k in steps[0]}


RANGES = {"i": (0, 1), "f": (0, 1), "o": (0, 1), "g": (-1, 1), "h": (-1, 1)}
GATE_NAMES = {"i": "input gate i", "f": "forget gate f", "g": "candidate g = tanh(.)", "o": "output gate o",
              "c": "cell state c", "h": "hidden state h"}


def gate_picture(gates: dict, labels: list[str], units: int = 16, cell: int = 14) -> tuple[Image.Image, list[int]]:
    """One labelled matrix (units x steps) per gate, for the `units` units whose cell state varies most."""
    chosen = np.argsort(-gates["c"].std(axis=1))[:units].tolist()
    bound = float(np.abs(gates["c"][chosen]).max()) or 1.0
    panels = []
    for key in ("i", "f", "g", "o", "c", "h"):
        lo, hi = RANGES.get(key, (-bound, bound))
        panels.append(labelled(matrix(gates[key][chosen], [f"unit {u}" for u in chosen], labels, cell=cell,
                                      lo=lo, hi=hi), f"{GATE_NAMES[key]}   ({lo:.3g} dark .. {hi:.3g} yellow)"))
    return stacked(*panels), chosen


def saturation_picture(gates: dict, side: int = 220) -> Image.Image:
    """Karpathy et al.'s Fig. 3: per unit, the fraction of steps its gate is left- (< 0.1, x) or right-saturated
    (> 0.9, y), for the input, forget and output gates."""
    panels = []
    for key in ("i", "f", "o"):
        canvas = Image.new("RGB", (side, side), WHITE)
        draw = ImageDraw.Draw(canvas)
        draw.rectangle([0, 0, side - 1, side - 1], outline=BLACK)
        draw.line([0, side - 1, side - 1, 0], fill=(200, 200, 200))
        left, right = (gates[key] < 0.1).mean(axis=1), (gates[key] > 0.9).mean(axis=1)
        for x, y in zip(left, right):
            u, v = 4 + x * (side - 8), side - 4 - y * (side - 8)
            draw.ellipse([u - 3, v - 3, u + 3, v + 3], fill=(59, 82, 139))
        panels.append((f"{GATE_NAMES[key]}: x < 0.1, y > 0.9", canvas))
    return sheet(panels, columns=3)


def text_heat(characters: list[str], values: np.ndarray, label: str, size: int = 18) -> Image.Image:
    """The characters in a row, each on a background coloured by its value in [-1, 1]."""
    width = size
    canvas = Image.new("RGB", (max(512, 8 + width * len(characters)), size + 10), WHITE)
    draw = ImageDraw.Draw(canvas)
    colours = ramp(values, -1, 1)
    for k, (character, colour) in enumerate(zip(characters, colours)):
        x = 4 + k * width
        draw.rectangle([x, 4, x + width - 1, size + 6], fill=tuple(int(v) for v in colour))
        luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        draw.text((x + 3, 5), character, fill=BLACK if luminance > 110 else WHITE, font=font(size - 4))
    return labelled(canvas, label)


def top_table(row_labels: list[str], distributions: torch.Tensor, tokens: list[str], actual=None,
              k: int = 5) -> Image.Image:
    """One row per step: after `row_label`, the `k` most probable next tokens, each cell shaded by its
    probability; the token that actually came next is outlined."""
    probabilities, indices = distributions.float().topk(min(k, distributions.shape[1]), dim=1)
    left = max([int(font(13).getlength(label)) for label in row_labels] + [40]) + 14
    cell, line = 104, 22
    canvas = Image.new("RGB", (max(512, left + k * cell + 8), line * len(row_labels) + 8), WHITE)
    draw = ImageDraw.Draw(canvas)
    for r, label in enumerate(row_labels):
        y = 4 + r * line
        draw.text((4, y + 3), label, fill=BLACK, font=font(13))
        for j in range(indices.shape[1]):
            p, token = float(probabilities[r, j]), tokens[int(indices[r, j])]
            colour = tuple(int(v) for v in ramp(np.array([p]), 0, 1)[0])
            x = left + j * cell
            outline = (255, 40, 40) if actual is not None and actual[r] == int(indices[r, j]) else WHITE
            draw.rectangle([x, y, x + cell - 4, y + line - 3], fill=colour, outline=outline, width=2)
            luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
            draw.text((x + 4, y + 3), f"{token[:9]} {p:.2f}", fill=BLACK if luminance > 110 else WHITE,
                      font=font(12))
    return canvas


# ------------------------------------------------------------------------------------------------ charlm
def _character(vocabulary, index: int) -> str:
    if index == vocabulary.start_id:
        return "^"
    if index == vocabulary.stop_id:
        return "$"
    text = vocabulary.decode([index])
    return "_" if text == " " else text if text.isprintable() and text else "?"


def stepped(rnn, inputs: torch.Tensor) -> list[list]:
    """Run a unidirectional `_Recurrent` (LSTM or RNN) one cell call at a time: inputs [B, T, I] (batch first) ->
    per layer, per step, the state the cell returned ((h, c) or h). The stack's own sequence pass computes the same
    numbers in fused form; the last layer's outputs are checked against it."""
    if rnn.num_directions != 1:
        raise ValueError("tracing steps through a bidirectional stack is not supported")
    x = inputs.transpose(0, 1)                                                   # [T, B, I]
    layers, batch = [], x.shape[1]
    for cell in rnn.cells:
        zeros = x.new_zeros(batch, rnn.hidden_size)
        state, states = ((zeros, zeros) if rnn.is_lstm else zeros), []
        for t in range(len(x)):
            state = cell(x[t], state)
            states.append(state)
        layers.append(states)
        x = torch.stack([s[0] if rnn.is_lstm else s for s in states])           # the next layer's input
    reference = rnn(inputs)[0].transpose(0, 1) if rnn.batch_first else rnn(inputs.transpose(0, 1))[0]   # [T, B, H]
    if not torch.allclose(x, reference, atol=1e-4):
        raise AssertionError("stepping the cells does not reproduce the recurrent stack's output")
    return layers


def trace_charlm(recipe, model, request) -> list[Step]:
    text = (request.text or DEFAULT_TEXT)[:48]
    vocabulary = model.vocabulary
    ids = torch.cat([torch.tensor([vocabulary.start_id]), vocabulary.encode(text)])[None].to(request.device)
    characters = [_character(vocabulary, int(i)) for i in ids[0]]
    cells = list(model.rnn.cells)
    embedded = model.embed(ids)                                                  # [1, T, E]
    layers = stepped(model.rnn, embedded)
    logits, _ = model.step_logits(ids)                                           # [1, T, V]
    steps = []
    lstm = isinstance(cells[0], LSTMCell)
    last = None
    inputs = embedded[0]                                                         # [T, E]
    for layer, (cell, states) in enumerate(zip(cells, layers), start=1):
        if lstm:
            previous = [(inputs.new_zeros(1, cell.hidden_size),) * 2] + states[:-1]
            calls = [((inputs[t][None], previous[t]), states[t]) for t in range(len(states))]
            gates = gates_over_time(calls, cell)
            inputs = torch.cat([h for h, _ in states])                           # [T, H]: the next layer reads h
            picture, chosen = gate_picture(gates, characters)
            steps.append(Step(
                f"gates-layer-{layer}", f"LSTM layer {layer}: gate activations at each character ({len(chosen)} of "
                f"{cell.hidden_size} units)", f"Hochreiter & Schmidhuber 1997; Gers et al. 2000; {KARPATHY_LSTM}, "
                "sec. 4.2", picture,
                "i, f, o = sigmoid(W x + U h_{t-1} + b), g = tanh(.), c_t = f c_{t-1} + i g, h_t = o tanh(c_t), from "
                "the cell's own weights at each step (checked against its output). Shown: the units whose cell "
                "state varies most. ^ = start, _ = space."))
            last = gates
        else:
            hidden = torch.cat(states).float().cpu().numpy().T                   # [H, T]
            chosen = np.argsort(-hidden.std(axis=1))[:16].tolist()
            steps.append(Step(
                f"hidden-layer-{layer}", f"RNN layer {layer}: hidden state at each character ({len(chosen)} of "
                f"{cell.hidden_size} units)", "Elman 1990; Karpathy, Johnson & Fei-Fei 2015, sec. 3",
                matrix(hidden[chosen], [f"unit {u}" for u in chosen], characters, cell=14, lo=-1, hi=1),
                "h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh). ^ = start, _ = space."))
    if lstm:
        steps.append(Step(
            "gate-saturation", "Gate saturation of the last layer: how often each unit's gates are below 0.1 or "
            f"above 0.9 over the {len(characters)} characters", f"{KARPATHY_LSTM}, sec. 4.2 (Fig. 3)",
            saturation_picture(last),
            "One dot per unit. Right-saturated forget gates (top left) are units that remember; the paper reads "
            "these statistics over a whole validation set, so a short text gives a rough picture."))
        varying = np.argsort(-last["c"].std(axis=1))[:4].tolist()
        lines = [text_heat(characters, np.tanh(last["c"][u]), f"unit {u}: tanh(c)") for u in varying]
        steps.append(Step(
            "cells-on-the-text", "The text coloured by a cell's tanh(c) at each character: the last layer's 4 most "
            "varying units", f"{KARPATHY_LSTM}, sec. 4.2 (Fig. 2)", stacked(*lines),
            "-1 dark blue .. +1 yellow. A trained model has cells that track quotes, line length or position in a "
            "word."))
    following = ids[0, 1:].tolist() + [None]
    steps.append(Step(
        "next-character", "The next-character distribution after each character: the 5 most probable",
        f"{KARPATHY_LSTM}, sec. 3; Graves 2013", top_table([f"after '{c}'" for c in characters],
                                                          logits[0].softmax(dim=-1).cpu(),
                                                          [_character(vocabulary, i) for i in range(len(vocabulary))],
                                                          actual=following),
        "Red outline: the character that actually came next. Sampling draws from this distribution (temperature "
        "scales the logits)."))
    return steps


# ------------------------------------------------------------------------------------------------ captioners
CAPTIONERS = {"deepimagesent": "Karpathy & Fei-Fei 2015", "showtell": "Vinyals et al. 2015",
              "showattendtell": "Xu et al. 2015"}


def trace_captioner(recipe, model, request) -> list[Step]:
    config, kind = model.config, model.config.kind
    paper = CAPTIONERS[kind]
    words = model.vocabulary.words
    tensor = prepare_image(request.image, config.image_size)[None].to(request.device)
    max_length = int(recipe.options.get("max_words", 20)) + 1
    grid = model.encoder(tensor)                                                  # [1, C, g, g]
    picture = enlarge(tensor[0].cpu())[0]
    heat = draw_grid(blend(picture, grid[0].float().mean(dim=0).cpu().numpy(), 0.6), model.grid, model.grid)
    encoder_title = {
        "deepimagesent": f"The CNN encoder: a {model.grid} x {model.grid} grid of {grid.shape[1]} channels, read "
                         f"by a fully connected layer as CNN(I) ({config.feature}-d)",
        "showtell": f"The CNN encoder: a {model.grid} x {model.grid} grid of {grid.shape[1]} channels, read by a "
                    f"fully connected layer as CNN(I) ({config.feature}-d)",
        "showattendtell": f"The encoder's L = {model.grid ** 2} annotation vectors a_i: one per cell of the "
                          f"{model.grid} x {model.grid} grid, {grid.shape[1]} channels"
                          + (" + the cell's (x, y)" if config.coords else ""),
    }[kind]
    steps = [Step(
        "encoder", encoder_title, {"deepimagesent": f"{paper}, sec. 3.2", "showtell": f"{paper}, sec. 3.1",
                                   "showattendtell": f"{paper}, sec. 3.1.1"}[kind],
        side_by_side(labelled(picture, f"input, {config.image_size} x {config.image_size}"),
                     labelled(heat, "mean activation of each cell")),
        "The encoder is pre-trained as a classifier of the words that describe the image (the recipe's phase "
        "'concepts'), standing in for the papers' ImageNet CNNs.")]

    with recording(model.out) as outputs, recording(model.cell) as cell_calls:
        beta_calls = []
        if kind == "showattendtell":
            with recording(model.beta) as beta_calls:
                ids, alphas = greedy_decode(model, tensor, max_length)[0]
        else:
            ids, alphas = greedy_decode(model, tensor, max_length)[0]
    caption = [words[i] for i in ids]
    inputs = ["<start>"] + caption                                                 # what each step read

    if kind == "deepimagesent":
        bias = model.image_bias(model.image_feature(grid))[0].float().cpu().numpy()           # b_v [H]
        hidden = torch.stack([out[0].float().cpu() for _, out in cell_calls], dim=1).numpy()  # [H, T]
        chosen = np.argsort(-hidden.std(axis=1))[:16].tolist()
        top = float(max(np.abs(bias[chosen]).max(), hidden[chosen].max(), 1e-6))
        body = side_by_side(
            labelled(matrix(bias[chosen][:, None], [f"unit {u}" for u in chosen], ["b_v"], cell=16, lo=-top,
                            hi=top), "image bias"),
            labelled(matrix(hidden[chosen], [f"unit {u}" for u in chosen], inputs, cell=16, lo=0, hi=top),
                     "h_t after reading each word"))
        steps.append(Step(
            "image-bias", "The image enters once: b_v = W_hi CNN(I) is added inside the ReLU at the first step only",
            f"{paper}, sec. 3.2, eq. (13)", body,
            "h_t = ReLU(W_hx x_t + W_hh h_{t-1} + b_h + 1(t = 1) b_v); afterwards the image lives only in h. "
            "The 16 most varying units shown."))
    elif kind == "showtell":
        gates = gates_over_time(cell_calls, model.cell)
        picture, chosen = gate_picture(gates, ["<image>"] + inputs)
        steps.append(Step(
            "lstm-gates", "The image embedding x_{-1} = W_I CNN(I) is the LSTM's input at t = -1, then the words: "
            "gate activations per step", f"{paper}, sec. 3.1, eqs. (4)-(8) and (10)-(12)", picture,
            f"Gates read from the cell's weights at each step (checked against its output); {len(chosen)} units "
            "whose cell state varies most."))
    else:
        shown = alphas if alphas is not None else torch.zeros(0, model.grid ** 2)
        sheet_picture = draw_attention(request.image, caption, shown, cell=128, columns=5)
        steps.append(Step(
            "attention-per-word", "Soft attention over the annotation vectors before each word: alpha_t = "
            "softmax(w^T tanh(W_a a_i + W_h h_{t-1} + b))", f"{paper}, sec. 3.1.2 and 4.2, eqs. (4)-(6)",
            sheet_picture, "Each panel: the image lit by the attention with which that word was generated "
                           "(bright = attended)."))
        betas = [float(torch.sigmoid(out[0, 0])) for _, out in beta_calls][:len(caption)]
        steps.append(Step(
            "gating-scalar", "The gating scalar beta_t = sigmoid(f_beta(h_{t-1})): how much of the attended "
            "context z_t enters each word", f"{paper}, sec. 4.2.1", bars(list(zip(caption, betas)), maximum=1.0),
            "z_t = beta_t sum_i alpha_ti a_i: near 1 the attended context enters in full, near 0 hardly at all."))

    distributions = torch.cat([out.float().softmax(dim=-1).cpu() for _, out in outputs])     # [T, V]
    actual = [model.vocabulary.ids.get(w) for w in caption] + [model.end_id]
    steps.append(Step(
        "next-word", "Greedy decoding: the 5 most probable next words after each word read",
        {"deepimagesent": f"{paper}, sec. 3.2, eq. (13)", "showtell": f"{paper}, sec. 3.1",
         "showattendtell": f"{paper}, sec. 3.1.2, eq. (7)"}[kind],
        top_table([f"after '{w}'" for w in inputs][:len(distributions)], distributions, words,
                  actual=actual[:len(distributions)]),
        "Red outline: the word taken (the most probable); decoding stops at <end>."))

    hypotheses = beam_search(model, tensor[0], beam_size=3, max_length=max_length)[:5]
    lines = [f"{h.log_probability:8.2f}   {' '.join(words[i] for i in h.tokens) or '(empty)'}"
             + ("" if h.finished else "   (cut at the length limit)") for h in hypotheses]
    steps.append(Step(
        "beam-search", "Beam search, beam 3: the finished hypotheses and their log-probabilities, best first",
        "Vinyals et al. 2015, sec. 3.1 (inference); Sutskever et al. 2014", text_picture(lines, width=640),
        "Each step keeps the 3 best extensions of the live hypotheses; a hypothesis ending in <end> is finished."))
    final = draw_caption(enlarge(request.image)[0], f"greedy: {' '.join(caption)}")
    steps.append(Step("caption", "The caption", {"deepimagesent": f"{paper}, sec. 3.2",
                                                "showtell": f"{paper}, sec. 3.1",
                                                "showattendtell": f"{paper}, sec. 4"}[kind], final,
                      f"Beam search's best: {' '.join(words[i] for i in hypotheses[0].tokens)}" if hypotheses else ""))
    return steps


# ------------------------------------------------------------------------------------------------ VQA
ZHU = "Zhu et al. 2016"


def trace_vqa(recipe, model, request) -> list[Step]:
    config = model.config
    question = request.question or DEFAULT_QUESTION
    choices = request.choices or DEFAULT_CHOICES
    rgb, device = request.image, request.device
    tensor = prepare_image(rgb, config.image_size)[None].to(device)
    grid = model.features(tensor)                                                  # [1, C, g, g]
    cells = model.cells(tensor)[0]                                                 # [1, L, D]
    picture = enlarge(tensor[0].cpu())[0]
    panels = [("input", picture),
              ("mean activation", draw_grid(blend(picture, grid[0].float().mean(dim=0).cpu().numpy(), 0.6),
                                            model.grid, model.grid))]
    if config.dense:
        dense = model.dense_head(grid)[0]                                          # [K + 1, g, g]
        panels.append(("dense head: most probable category", class_map_picture(
            dense[:-1].argmax(dim=0).cpu().numpy(), picture.size)))
        panels.append(("dense head: object-centre probability", blend(picture, dense[-1].sigmoid().cpu().numpy(),
                                                                      0.7, 0, 1)))
    body = sheet([(label, p.resize((300, 300))) for label, p in panels], columns=2)
    if config.dense:                          # the dense head's classes are category ids, 0 = background
        present = sorted(int(c) for c in dense[:-1].argmax(dim=0).unique().tolist())
        body = stacked(body, legend([((40, 40, 40), "background") if c == 0 else
                                     (colour_for(c), str(recipe.categories.get(c, c))) for c in present],
                                    width=body.width))
    steps = [Step(
        "grid-cells", f"C(I): the CNN's {model.grid} x {model.grid} grid cells, each a {cells.shape[-1]}-d vector",
        f"{ZHU}, sec. 4" + ("; the dense pre-training head is scenekit's (see models/vqa.py)" if config.dense else ""),
        body,
        "Each cell carries the CNN's channels" + (", the dense head's category probabilities and centre probability"
                                                 if config.dense else "")
        + (", and its (x, y)" if config.coords else "") + ".")]

    tokens, _ = encode_question(model.vocabulary, question, choices)
    words = [model.vocabulary.words[int(i)] for i in tokens]
    attention_calls, count_calls = [], []
    if config.attention:
        with recording(model.att_score) as attention_calls:
            if config.count_glimpse:
                with recording(model.count_score) as count_calls:
                    result = answer_question(model, rgb, question, choices, device)
            else:
                result = answer_question(model, rgb, question, choices, device)
    else:
        result = answer_question(model, rgb, question, choices, device)
    if attention_calls:
        alphas = torch.stack([out[0, :, 0].float().softmax(dim=0).cpu() for _, out in attention_calls])   # [T+2, L]
        labels = ["x0 (image)"] + words + ["after the question"]
        steps.append(Step(
            "attention-per-word", "Attention at every step of the question: a_t = softmax(w_a^T tanh(W_he h_{t-1} "
            "+ W_ce C(I)) + b_a), r_t = a_t^T C(I)", f"{ZHU}, sec. 4, eqs. (1)-(2)",
            draw_attention(rgb, labels[:len(alphas)], alphas, cell=128, columns=5),
            "The LSTM reads the image feature, then the question word by word, each step with the cells its "
            "attention picked; the last map gives r_T for the answer."))
    if count_calls:
        gate = count_calls[-1][1][0, :, 0].float().sigmoid().cpu().numpy().reshape(model.grid, model.grid)
        steps.append(Step(
            "count-glimpse", "Count glimpse: sigmoid(s_i) of every cell, summed without normalising (n_T)",
            "Trott et al. 2018; Zhang et al. 2018 (scenekit's count read-out, see models/vqa.py)",
            side_by_side(labelled(picture, "input"), labelled(blend(picture, gate, 0.6, 0, 1), "sigmoid(s_i)")),
            f"Softmax attention averages; this sum grows with the number of matching cells. Sum = {gate.sum():.2f}."))
    rows = [(f"{'> ' if k == result['index'] else ''}{choice}", p) for k, (choice, p) in
            enumerate(zip(choices, result["probabilities"]))]
    steps.append(Step(
        "answer-scores", f"\"{question}\" -> \"{result['answer']}\": q = tanh(W_q h_T + W_r r_T) scored against each "
        "choice, softmax over the choices", f"{ZHU}, sec. 4", bars(rows, maximum=1.0),
        "Each candidate answer is the mean of its word embeddings through a linear layer; its score is the dot "
        "product with q."))
    return steps
