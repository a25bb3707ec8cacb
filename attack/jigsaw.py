"""Jigsaw-puzzle-solver attack on block-scrambling EtC (after Chuman, Kurihara and Kiya's extended
jigsaw puzzle solver attacks).

EtC (``ppdata.schemes.EtcScheme``) moves every B x B block to another position and rotates,
mirrors, negates and colour-shuffles it. Each encrypted block is therefore one plain block under
one of 96 transforms (8 symmetries of the square x negation x 6 channel orders, a group: its 96
variants include the plain block). The solver reassembles the puzzle greedily:

- every piece (encrypted block) in every variant has four edges (the outer row or column of
  pixels, (B, 3) values) and the row or column next to each;
- the dissimilarity of two pieces side by side is the L1 distance between each edge and the
  other piece's edge extrapolated by half its gradient (``2 e - e_inner`` blended with ``e``),
  summed both ways;
- placement grows from a seed piece (in its variant 0): among the free slots next to placed
  pieces, within a frame of the image's size in blocks, take the (slot, piece, variant) whose
  summed dissimilarity to the slot's placed neighbours is lowest relative to the next-best
  piece (most confident first; slots with more placed neighbours first), place it, update the
  slots around it; pieces left when the frame is full go to the empty slots.

Its output is right at best up to a global transform of the whole image (8 symmetries, a global
negation, a channel order), chosen by an oracle or by ``attack.chooser``. With one key for all
images (``shared=True``) every piece position carries the same transform in every image, so the
dissimilarities of a group of images are summed and the puzzle is solved once for all of them.
Images (N, H, W, 3) uint8; torch is used for the bulk distance computations.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch

# the 96 block transforms: (geometry g: np.rot90 by g & 3, then fliplr if g & 4; channel order; negate)
TRANSFORMS = list(itertools.product(range(8), range(6), (False, True)))
_PERMS = np.array(list(itertools.permutations(range(3))))
SIDES = ("top", "right", "bottom", "left")
_OPPOSITE = {0: 2, 1: 3, 2: 0, 3: 1}
_STEP = {0: (-1, 0), 1: (0, 1), 2: (1, 0), 3: (0, -1)}  # slot of the neighbour across each side


def geometry(blocks: np.ndarray, g: int) -> np.ndarray:
    """Symmetry ``g`` of blocks (..., B, B, 3): ``np.rot90`` by ``g & 3`` quarter turns (over the
    two block axes), then a left-right mirror if ``g & 4``."""
    out = np.rot90(blocks, k=g & 3, axes=(-3, -2))
    return out[..., ::-1, :] if g & 4 else out


def variants(pieces: np.ndarray) -> np.ndarray:
    """All 96 transforms of pieces (P, B, B, 3) uint8: (P, 96, B, B, 3) in ``TRANSFORMS`` order."""
    out = []
    for g, k, neg in TRANSFORMS:
        v = geometry(pieces, g)[..., _PERMS[k]]
        out.append(255 - v if neg else v)
    return np.stack(out, axis=1)


def _edges(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Outer edges and their inner neighbours of variant blocks (..., B, B, 3) as float:
    (..., 4, B*3) each, sides in ``SIDES`` order, read left to right / top to bottom."""
    outer = torch.stack([v[..., 0, :, :], v[..., :, -1, :], v[..., -1, :, :], v[..., :, 0, :]], dim=-3)
    inner = torch.stack([v[..., 1, :, :], v[..., :, -2, :], v[..., -2, :, :], v[..., :, 1, :]], dim=-3)
    return outer.flatten(-2).float(), inner.flatten(-2).float()


def _predict(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """The value expected just across an edge: the edge plus half its gradient."""
    return outer + 0.5 * (outer - inner)


def _to_blocks(x: np.ndarray, b: int) -> np.ndarray:
    n, h, w, _ = x.shape
    return x.reshape(n, h // b, b, w // b, b, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, -1, b, b, 3)


def _from_blocks(blocks: np.ndarray, bh: int, bw: int) -> np.ndarray:
    n, _, b, _, _ = blocks.shape
    return blocks.reshape(n, bh, bw, b, b, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, bh * b, bw * b, 3)


def solve(pieces: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Assemble pieces (G, P, B, B, 3) uint8 (G images sharing one arrangement: G = 1 for an image
    under its own key) into a ``grid`` = (rows, columns) of blocks. Returns ``(piece, variant)``,
    each (rows * columns,) int64: the piece and its transform (index into ``TRANSFORMS``) at every
    position, row-major."""
    g_, p_, b = pieces.shape[:3]
    bh, bw = grid
    V = torch.from_numpy(np.ascontiguousarray(variants(pieces.reshape(g_ * p_, b, b, 3)))).reshape(g_, p_, 96, b, b, 3)
    outer, inner = _edges(V)  # (G, P, 96, 4, B*3)
    pred = _predict(outer, inner)
    # per side, (G, B*3, P*96) tensors, candidates last: the bulk distance computations vectorise
    side_out = [outer[:, :, :, s].reshape(g_, p_ * 96, -1).transpose(1, 2).contiguous() for s in range(4)]
    side_pred = [pred[:, :, :, s].reshape(g_, p_ * 96, -1).transpose(1, 2).contiguous() for s in range(4)]
    # cand[s]: edges of every candidate (piece, variant) facing a neighbour across side s
    scale = float(g_ * b * 3)
    placed: dict[tuple[int, int], tuple[int, int]] = {}
    used = torch.zeros(p_, dtype=torch.bool)
    frontier: dict[tuple[int, int], dict] = {}

    box = [0, 0, 0, 0]  # rows and columns spanned by placed pieces: min r, max r, min c, max c

    def bbox_ok(r, c):
        return max(box[1], r) - min(box[0], r) < bh and max(box[3], c) - min(box[2], c) < bw

    def add_neighbour(slot, side_of_slot, piece, var):
        """Slot ``slot`` gets a placed neighbour across its side ``side_of_slot``."""
        s_n = _OPPOSITE[side_of_slot]  # the neighbour's side facing the slot
        e_out, e_pred = outer[:, piece, var, s_n], pred[:, piece, var, s_n]  # (G, B*3)
        # the candidate's edge facing the neighbour is its side ``side_of_slot``; edges are read in
        # the same direction on both sides, so they compare element by element
        c_out, c_pred = side_out[side_of_slot], side_pred[side_of_slot]  # (G, B*3, P*96)
        d = torch.sub(c_out, e_pred[:, :, None]).abs_().sum(1)
        d += torch.sub(c_pred, e_out[:, :, None]).abs_().sum(1)
        cost = d.sum(0).reshape(p_, 96)
        f = frontier.setdefault(slot, {"cost": torch.zeros(p_, 96), "n": 0})
        f["cost"] += cost / scale
        f["n"] += 1
        f["piece_min"], f["piece_var"] = f["cost"].min(dim=1)  # best variant of every piece
        f["best"] = None

    def best_of(f):
        if f.get("best") is None:
            per_piece, var = f["piece_min"].masked_fill(used, float("inf")), f["piece_var"]
            two = torch.topk(per_piece, k=min(2, p_), largest=False)
            first = float(two.values[0])
            second = float(two.values[1]) if len(two.values) > 1 else first + 1.0
            q = int(two.indices[0])
            f["best"] = (first / f["n"], (second - first) / (second + 1e-6), q, int(var[q]))
        return f["best"]

    def place(slot, piece, var):
        placed[slot] = (piece, var)
        box[:] = [min(box[0], slot[0]), max(box[1], slot[0]), min(box[2], slot[1]), max(box[3], slot[1])]
        used[piece] = True
        frontier.pop(slot, None)
        for f in frontier.values():
            if f.get("best") is not None and f["best"][2] == piece:
                f["best"] = None
        for side, (dr, dc) in _STEP.items():
            nb = (slot[0] + dr, slot[1] + dc)
            if nb in placed:
                continue
            add_neighbour(nb, _OPPOSITE[side], piece, var)
        for s in [s for s in frontier if not bbox_ok(*s)]:
            frontier.pop(s)

    # seed: the piece whose best match anywhere is most distinctive is hard to find cheaply; take
    # the piece with the most texture (largest spread), in its variant 0
    spread = pieces.reshape(g_, p_, -1).astype(np.float32).std(axis=2).sum(axis=0)
    place((0, 0), int(np.argmax(spread)), 0)
    while len(placed) < bh * bw and frontier and not bool(used.all()):
        scored = [(f["n"], best_of(f)[1], -best_of(f)[0], s) for s, f in frontier.items()]
        n_nb, _, _, slot = max(scored)
        _, _, q, v = best_of(frontier[slot])
        place(slot, q, v)
    r0 = min(k[0] for k in placed)
    c0 = min(k[1] for k in placed)
    piece = np.full(bh * bw, -1, np.int64)
    var = np.zeros(bh * bw, np.int64)
    for (r, c), (q, v) in placed.items():
        piece[(r - r0) * bw + (c - c0)] = q
        var[(r - r0) * bw + (c - c0)] = v
    left = np.flatnonzero(~used.numpy())
    empty = np.flatnonzero(piece < 0)
    piece[empty[: len(left)]] = left[: len(empty)]
    return piece, var


def assemble(pieces: np.ndarray, piece: np.ndarray, var: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Images (G, H, W, 3) from pieces (G, P, B, B, 3) placed as ``solve`` says."""
    g_, p_, b = pieces.shape[:3]
    out = np.empty((g_, len(piece), b, b, 3), np.uint8)
    for v in np.unique(var):
        at = np.flatnonzero(var == v)
        gg, k, neg = TRANSFORMS[v]
        blk = geometry(pieces[:, piece[at]], gg)[..., _PERMS[k]]
        out[:, at] = 255 - blk if neg else blk
    return _from_blocks(out, *grid)


def attack(encrypted: np.ndarray, block_size: int = 4, shared: bool = False, pool: int = 32) -> np.ndarray:
    """Reassemble EtC-encrypted images (N, H, W, 3) uint8, right at best up to a global transform.

    ``shared``: all images under one key; the puzzle is solved once from the first ``pool``
    images (their dissimilarities summed) and applied to all."""
    b = block_size
    n, h, w, _ = encrypted.shape
    grid = (h // b, w // b)
    blocks = _to_blocks(encrypted, b)
    if shared:
        piece, var = solve(blocks[:pool], grid)
        return assemble(blocks, piece, var, grid)
    out = np.empty_like(encrypted)
    for i in range(n):
        piece, var = solve(blocks[i : i + 1], grid)
        out[i] = assemble(blocks[i : i + 1], piece, var, grid)[0]
    return out
