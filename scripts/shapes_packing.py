"""The data and packing pieces of ``scripts/train_tiny_shapes.py`` (see its docstring): targets read
off a shapes scene, extra questions answered by the benchmark's oracle, the fast segment encoder,
the packed batch with its 4-D mask, and the auxiliary head's loss."""

from __future__ import annotations

import re

import torch

KEY = "llava-tiny-shapes"
SMALL = 9  # reference-pixel diameter at or below which a shape is in size class "small"
#: the auxiliary head's outputs: per patch (object of its cell 17, size class 4, cell 9), per image
#: (16 present pairs, counts 0..4 of 4 colours and 4 shapes)
CELL_AUX = (17, 4, 9)
N_PAIRS, N_COUNTS, COUNT_CLASSES = 16, 8, 5
HEAD_FILE = "training_aux_head.pt"  # the auxiliary head, saved beside the model only to go on training
AUX_DIM = sum(CELL_AUX) + N_PAIRS + N_COUNTS * COUNT_CLASSES

def vocabulary() -> list[str]:
    from evaluation import shapes

    words = list(shapes.ANSWERS) + list(shapes.COLOURS) + list(shapes.SHAPES) + list(shapes.PLURALS.values())
    words += "is there a how many are shapes what colour shape the in of left right above below center top " \
             "middle bottom smallest ? ,".split()
    return words


# ---------------------------------------------------------------------- targets


def patch_labels(objects, grid: int = 12) -> torch.Tensor:
    """Per patch (raster order), of the grid cell the patch lies in: the object's class (0 none,
    1 + 4 colour + shape), its size class (0 none, 1 small, 2 medium, 3 large) and the cell (0..8)."""
    from evaluation import shapes

    at = {(o.row, o.col): o for o in objects}
    out = torch.zeros(3, grid, grid, dtype=torch.long)
    per_cell = grid // shapes.GRID
    for (r, c) in shapes.POSITIONS:
        o = at.get((r, c))
        cls = 0 if o is None else 1 + 4 * shapes.COLOURS.index(o.colour) + shapes.SHAPES.index(o.shape)
        size = 0 if o is None else (1 if o.size <= SMALL else (2 if o.size < 16 else 3))
        block = (slice(None), slice(r * per_cell, (r + 1) * per_cell), slice(c * per_cell, (c + 1) * per_cell))
        out[block] = torch.tensor([cls, size, r * shapes.GRID + c]).view(3, 1, 1)
    return out.flatten(1)


def image_labels(objects) -> tuple[torch.Tensor, torch.Tensor]:
    """(16 present (colour, shape) pairs as 0/1, 8 counts: shapes of each colour then of each shape)."""
    from evaluation import shapes

    present = torch.zeros(N_PAIRS)
    for o in objects:
        present[4 * shapes.COLOURS.index(o.colour) + shapes.SHAPES.index(o.shape)] = 1
    counts = [sum(o.colour == c for o in objects) for c in shapes.COLOURS]
    counts += [sum(o.shape == s for o in objects) for s in shapes.SHAPES]
    return present, torch.tensor(counts).clamp(max=COUNT_CLASSES - 1)


# ---------------------------------------------------------------------- extra questions


def extra_questions_of(kinds, objects, rng, n: int) -> list[tuple[str, str, str]]:
    """Up to ``n`` extra questions of the given kinds only (several draws of :func:`extra_questions`)."""
    out: list = []
    for _ in range(6):
        out += [t for t in extra_questions(objects, rng, 99) if t[0] in kinds]
        if len(out) >= n:
            break
    return out[:n]


def extra_questions(objects, rng, n: int) -> list[tuple[str, str, str]]:
    """Up to ``n`` (kind, question, answer) about a scene: presence yes and no, two counts (each by
    colour or by shape, at random), two colour_at and two shape_at, two relative, the smallest colour where one
    shape is clearly (>= 4 reference pixels) smaller than the rest; answers from
    :func:`evaluation.shapes.answer`, the oracle that defines the benchmark's answers."""
    from evaluation import shapes

    objs = list(objects)
    pairs = {(o.colour, o.shape) for o in objs}
    out = []
    o = objs[rng.integers(len(objs))]
    out.append(("presence", f"is there a {o.colour} {o.shape}?"))
    colours, kinds = {o.colour for o in objs}, {o.shape for o in objs}
    absent = [(c, s) for c in shapes.COLOURS for s in shapes.SHAPES if (c, s) not in pairs]
    hard = [(c, s) for c, s in absent if c in colours and s in kinds]
    pool = hard if hard and rng.random() < 0.75 else absent
    if pool:
        c, s = pool[rng.integers(len(pool))]
        out.append(("presence", f"is there a {c} {s}?"))
    for _ in range(4):  # a count by colour and one by shape (answers 0..3 only)
        if rng.random() < 0.5:
            c = shapes.COLOURS[rng.integers(4)]
            q = f"how many {c} shapes are there?"
        else:
            s = shapes.SHAPES[rng.integers(4)]
            q = f"how many {shapes.PLURALS[s]} are there?"
        out.append(("count", q))
        if sum(k == "count" for k, _ in out) == 2:
            break
    for kind, form in (("colour_at", "what colour is the shape in the {}?"), ("shape_at", "what shape is in the {}?")):
        for i in rng.permutation(len(objs))[:2]:
            out.append((kind, form.format(objs[i].position)))
    for _ in range(2):
        rel = shapes.RELATIONS[rng.integers(4)]
        horizontal = rel in ("left of", "right of")
        cand = [(a, b) for a in objs for b in objs
                if (a.col != b.col if horizontal else a.row != b.row)]
        if cand:
            a, b = cand[rng.integers(len(cand))]
            out.append(("relative", f"is the {a.colour} {a.shape} {rel} the {b.colour} {b.shape}?"))
    sizes = sorted(o.size for o in objs)
    if len(sizes) > 1 and sizes[1] - sizes[0] >= 4:
        out.append(("smallest", "what colour is the smallest shape?"))
    qa = [(k, q, shapes.answer(q, objs)) for k, q in out]
    qa = [t for t in qa if t[2] in shapes.KIND_ANSWERS[t[0]]]
    return [qa[i] for i in rng.permutation(len(qa))[:n]]


def locate_questions(objects, rng, n: int) -> list[tuple[str, str, str]]:
    """Up to ``n`` training-only questions "the {colour} {shape} is in the?" answered by the named
    shape's cell (``top left`` ... ``center``, one or two words). They are not a benchmark kind: they
    teach the LLM to find one shape by both its colour and its shape (each pair is at most once in a
    scene), the step that presence and relative questions need and answer-only training did not teach.
    ``n`` = 0 draws nothing from ``rng`` (runs without them draw as before)."""
    if n <= 0:
        return []
    objs = list(objects)
    return [("locate", f"the {objs[i].colour} {objs[i].shape} is in the?", objs[i].position)
            for i in rng.permutation(len(objs))[:n]]


class FastEncode:
    """The segment after the image (``\\n{question} ASSISTANT: {answer}</s>``) as ids and labels,
    by dictionary lookup; checked against the tokenizer's own encoding."""

    def __init__(self, tok, encode, n_prefix: int):
        self.vocab, self.encode, self.n_prefix = tok.get_vocab(), encode, n_prefix
        self.split = re.compile(r"\n|[A-Za-z]+|[^\sA-Za-z]")
        self.eos = tok.eos_token_id
        self.tail = [self.vocab["ASSISTANT"], self.vocab[":"]]

    def __call__(self, question: str, answer: str) -> tuple[list[int], list[int]]:
        q = [self.vocab["\n"]] + [self.vocab[w] for w in self.split.findall(question)] + self.tail
        a = [self.vocab[w] for w in answer.split()] + [self.eos]  # one word, or a cell's two
        return q + a, [-100] * len(q) + a

    def check(self, question: str, answer: str) -> None:
        ids, labels = self.encode(question, answer)
        mine = self(question, answer)
        if (ids[self.n_prefix:], labels[self.n_prefix:]) != mine:
            raise SystemExit(f"fast encoding differs from the tokenizer's on {question!r}")


# ---------------------------------------------------------------------- model pieces


def vision_features(model, pix: torch.Tensor) -> torch.Tensor:
    """The features the projector reads (the configured ViT layer, CLS dropped as 'default' does)."""
    cfg = model.config
    hs = model.model.vision_tower(pix, output_hidden_states=True).hidden_states[cfg.vision_feature_layer]
    return hs[:, 1:] if cfg.vision_feature_select_strategy == "default" else hs


def packed_batch(prefix: list[int], segments: list[list[tuple[list[int], list[int]]]], pad: int,
                 restart: bool = True):
    """(ids, labels, position ids, 4-D boolean mask) for images each with several question segments
    (``restart=False`` numbers the positions straight through: only to show the check catches it)."""
    n_pre = len(prefix)
    rows = []
    for segs in segments:
        ids, lab, pos, seg = list(prefix), [-100] * n_pre, list(range(n_pre)), [0] * n_pre
        for k, (e, l) in enumerate(segs, start=1):
            ids += e
            lab += l
            start = n_pre if restart else len(pos)
            pos += range(start, start + len(e))
            seg += [k] * len(e)
        rows.append((ids, lab, pos, seg))
    length = max(len(r[0]) for r in rows)
    B = len(rows)
    ids_t = torch.full((B, length), pad)
    lab_t = torch.full((B, length), -100)
    pos_t = torch.zeros((B, length), dtype=torch.long)
    seg_t = torch.full((B, length), -1)
    for b, (ids, lab, pos, seg) in enumerate(rows):
        n = len(ids)
        ids_t[b, :n], lab_t[b, :n], pos_t[b, :n], seg_t[b, :n] = (torch.tensor(ids), torch.tensor(lab),
                                                                  torch.tensor(pos), torch.tensor(seg))
    i = torch.arange(length)
    causal = i[None, :] <= i[:, None]  # (query, key)
    sq, sk = seg_t[:, :, None], seg_t[:, None, :]
    mask = causal & (sk >= 0) & ((sk == 0) | (sk == sq))
    mask |= torch.eye(length, dtype=torch.bool)  # padding rows see themselves (no empty softmax)
    return ids_t, lab_t, pos_t, mask[:, None]


def packed_logits(model, ids, pos, mask, feats, image_slice: slice) -> torch.Tensor:
    """Logits of the packed sequences: the image positions take the projector's output of ``feats``."""
    lm = model.model.language_model
    emb = lm.embed_tokens(ids)
    proj = model.model.multi_modal_projector(feats)
    emb = torch.cat([emb[:, :image_slice.start], proj, emb[:, image_slice.stop:]], dim=1)
    hidden = lm(inputs_embeds=emb, attention_mask=mask, position_ids=pos).last_hidden_state
    return model.lm_head(hidden), proj


def aux_loss(head, proj, cell_lab, present, counts) -> torch.Tensor:
    out = head(proj)  # (B, 144, AUX_DIM)
    parts = out.split([*CELL_AUX, N_PAIRS + N_COUNTS * COUNT_CLASSES], dim=-1)
    ce = torch.nn.functional.cross_entropy
    loss = sum(ce(p.flatten(0, 1), cell_lab[:, j].flatten()) for j, p in enumerate(parts[:3]))
    glob = parts[3]
    loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(
        glob[..., :N_PAIRS], present[:, None].expand(-1, glob.shape[1], -1))
    cnt = glob[..., N_PAIRS:].reshape(*glob.shape[:2], N_COUNTS, COUNT_CLASSES)
    loss = loss + ce(cnt.flatten(0, 2), counts[:, None].expand(-1, glob.shape[1], -1).flatten())
    return loss


def aux_accuracy(head, proj, cell_lab, counts) -> tuple[float, float]:
    """(per-patch object-of-cell accuracy, per-image count accuracy) of the auxiliary head."""
    out = head(proj)
    obj = (out[..., :17].argmax(-1) == cell_lab[:, 0]).float().mean().item()
    cnt = out[..., sum(CELL_AUX) + N_PAIRS:].reshape(*out.shape[:2], N_COUNTS, COUNT_CLASSES).argmax(-1)
    return obj, (cnt == counts[:, None]).float().mean().item()
