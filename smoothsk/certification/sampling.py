"""The base network's votes on noisy copies of inputs: the one sampling loop.

Noise for input ``i`` is drawn in fixed blocks of ``NOISE_BLOCK`` rows, each block
seeded from ``(random_state, i, stream, block)`` alone.  Counts therefore never
depend on ``batch_size``, on how inputs are grouped in a batch, or on how a data
set is split into calls (pass ``index_offset``); resumable and distributed runs
rely on this.
"""

from __future__ import annotations

import numpy as np
import torch

from smoothsk.certification import heap
from smoothsk.certification.adapters import as_base_network
from smoothsk.certification.inputs import (
    SAMPLING_CONSTRAINTS,
    all_finite,
    base_seed,
    check_index_offset,
    check_positive_int,
    check_shared_noise,
    chunk_indices,
    evaluating,
    global_indices,
    input_chunks,
    module_device_dtype,
    noise_chunk_size,
    take_rows,
)
from smoothsk.certification.noise import LatticeGaussian, check_sigma, make_noise
from smoothsk.certification.precision import check_precision, precision_context
from smoothsk.validation import POSITIVE_INT, validate_params

NOISE_BLOCK = 1024


STREAM_SELECTION, STREAM_ESTIMATION, STREAM_PREDICTION = 0, 1, 2
# The "index" of the noise every input shares (shared_noise=True): no input's global
# index reaches it, so shared blocks never coincide with an input's own.
SHARED_NOISE_INDEX = 2**63


# --------------------------------------------------------------------------- sampling
class NoiseSampler:
    """Counts the base network's votes on ``x + δ`` for a chunk of inputs.

    Noise block ``b`` of input ``i`` is seeded by ``(base_seed, i, stream, b)``; with
    ``shared_noise`` every input uses the blocks of one index, ``SHARED_NOISE_INDEX``,
    each drawn once per chunk and added to every input of it.  With a
    :class:`~smoothsk.certification.noise.LatticeGaussian` ``lattice`` the chunk holds
    integer lattice coordinates, the noise is integer offsets, and rows become the
    network's inputs only in :meth:`_logits`.
    """

    def __init__(self, module, sigma, batch_size, base_seed, stream, precision="fp32",
                 shared_noise=False, lattice: LatticeGaussian | None = None):
        self.shared_noise = bool(shared_noise)
        self.lattice = lattice
        self.module = module
        self.sigma = sigma
        self.batch_size = batch_size
        self.base_seed = base_seed
        self.stream = stream
        self.device, self.dtype = module_device_dtype(module)
        # noisy rows before the network: lattice coordinates need exact integers
        self.row_dtype = lattice.lattice_dtype(self.dtype) if lattice else self.dtype
        self.checked = False  # whether a batch has gone through the network
        self.precision = check_precision(precision, self.device)
        self.generator = torch.Generator(device=self.device)
        self._offsets = {}  # shared noise: (inputs, classes, block size, tile) -> offsets

    def _block_seed(self, index: int, block: int) -> int:
        stream = list(self.stream) if isinstance(self.stream, tuple) else [self.stream]
        sequence = np.random.SeedSequence([self.base_seed, int(index), *stream, block])
        return int(sequence.generate_state(1, np.uint64)[0] >> np.uint64(1))

    def _noise(self, index: int, block: int, size: int, shape) -> torch.Tensor:
        """``σ·N(0, I)`` draws of shape ``(size, *shape)`` for block ``block`` of ``index``
        (lattice offsets for the discrete Gaussian)."""
        self.generator.manual_seed(self._block_seed(index, block))
        if self.lattice is not None:
            return self.lattice.sample((size, *shape), self.generator, self.row_dtype)
        noise = torch.randn((size, *shape), generator=self.generator, device=self.device,
                            dtype=self.dtype)
        return noise.mul_(self.sigma)

    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        if self.lattice is not None:  # lattice points to inputs, in place (rows are ours)
            batch = self.lattice.from_lattice(batch, self.dtype)
        with precision_context(self.precision, self.device):
            try:
                logits = self.module(batch)
            except RuntimeError as exc:
                if not self.checked:  # the first batch: a network of another input shape
                    raise ValueError(
                        f"The network cannot process inputs of shape {tuple(batch.shape[1:])} "
                        f"({exc}). Pass inputs of the shape it was built for (e.g. reshape "
                        "images to (N, channels, height, width), or flat features to "
                        "(N, features)).") from exc
                raise
        self.checked = True
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or len(logits) != len(batch):
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
            raise ValueError(
                f"The network must return logits of shape (batch, n_classes); for a batch "
                f"of {len(batch)} inputs it returned {shape}."
            )
        return logits

    def _votes(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self._logits(batch)
        # A flag on the device, read once per chunk: a NaN network would otherwise
        # "vote" for class 0 on every draw and be certified at the largest radius.  The
        # row maxima carry it: a NaN anywhere makes its row's max NaN, +inf is the max,
        # an all −inf row has max −inf; a −inf elsewhere cannot change the vote.
        top, votes = logits.max(dim=1)
        self._finite &= all_finite(top)
        return votes, logits.shape[1]

    def counts(self, chunk: torch.Tensor, first_index, num: int) -> torch.Tensor:
        """Vote counts of shape ``(len(chunk), n_classes)`` from ``num`` draws each.

        ``first_index`` is the global index of ``chunk[0]`` (the rest follow), or an
        array holding every row's global index.  At most ``batch_size + NOISE_BLOCK``
        noisy rows exist at any time, whatever ``num``.
        """
        if self.shared_noise:
            return self._shared_counts(chunk, num)
        if np.ndim(first_index) == 0:
            indices = range(first_index, first_index + len(chunk))
        else:
            indices = first_index
        counts = None
        pending, owners, n_pending = [], [], 0
        self._finite = torch.ones((), dtype=torch.bool, device=self.device)

        def run(rows: torch.Tensor, owner: torch.Tensor):
            nonlocal counts
            votes, n_classes = self._votes(rows)
            if counts is None:
                counts = torch.zeros(len(chunk) * n_classes, dtype=torch.int64, device=self.device)
            elif counts.numel() != len(chunk) * n_classes:
                raise ValueError("The network returned a varying number of classes.")
            counts.index_add_(0, owner * n_classes + votes, torch.ones_like(votes))

        def drain(final: bool):
            nonlocal pending, owners, n_pending
            if not pending or (not final and n_pending < self.batch_size):
                return
            if len(pending) == 1:  # a single piece needs no copy
                rows, owner = pending[0], owners[0]
            else:
                rows, owner = torch.cat(pending), torch.cat(owners)
            stop = len(rows) if final else len(rows) - len(rows) % self.batch_size
            for start in range(0, stop, self.batch_size):
                end = min(start + self.batch_size, stop)
                run(rows[start:end], owner[start:end])
            pending, owners = [rows[stop:]], [owner[stop:]]
            n_pending = len(rows) - stop

        def add(rows: torch.Tensor, owner: torch.Tensor):
            nonlocal n_pending
            pending.append(rows)
            owners.append(owner)
            n_pending += len(rows)
            drain(final=False)

        for j in range(len(chunk)):
            owner = torch.full((NOISE_BLOCK,), j, dtype=torch.int64, device=self.device)
            for block, start in enumerate(range(0, num, NOISE_BLOCK)):
                size = min(NOISE_BLOCK, num - start)
                noise = self._noise(indices[j], block, size, chunk.shape[1:])
                add(noise.add_(chunk[j]), owner[:size])
        drain(final=True)
        self._check_finite()
        return counts.view(len(chunk), -1)

    def _check_finite(self):
        if not bool(self._finite):
            raise FloatingPointError(
                "The network returned non-finite logits (NaN or inf) on noisy inputs, so its "
                "votes mean nothing and no certificate can be given. Check the network's "
                "weights (a diverged training run) and that inputs and sigma are finite and "
                "of a sensible scale."
            )

    def _shared_counts(self, chunk: torch.Tensor, num: int) -> torch.Tensor:
        """:meth:`counts` with one draw of each noise block added to every input.

        A block's ``len(chunk) · size`` noisy rows are taken tile by tile: tile ``t``
        holds draws ``t·w … t·w + w − 1`` (:func:`shared_noise_tile`) for every input,
        input by input, so its row ``r`` is input ``r // w`` plus draw ``t·w + r % w``.
        Batches are built in one reused buffer by broadcast adds: ``batch_size`` rows
        rounded down to a multiple of the tile's width, so a batch is one add of whole
        inputs (two where it crosses into the next tile; the last, narrower tile may
        need a part of an input at each end).  Tiles keep the noise a batch reads small
        enough to stay in the core's L1 cache: for a 64-feature MLP the input-major order
        (one tile per block) ran slower in the loop alone (docs/benchmarks.md).  The order
        changes no count.
        Votes and row maxima go into per-block buffers; counting and the finiteness
        check run once per block, not per batch: for a small network per-batch
        bookkeeping costs as much as its forward pass.
        """
        shape, n_inputs = chunk.shape[1:], len(chunk)
        buffer = torch.empty((self.batch_size, *shape), device=self.device,
                             dtype=self.row_dtype)
        votes = torch.empty(n_inputs * min(num, NOISE_BLOCK), dtype=torch.int64,
                            device=self.device)
        tops = counts = None
        # one 1 seen len(votes) times: index_add_ needs no filled tensor of them
        ones = torch.ones((), dtype=torch.int64, device=self.device).expand(len(votes))
        width = shared_noise_tile(buffer[0].numel() * buffer.element_size())
        step = self.batch_size
        if step > width:  # whole tile rows: one broadcast add a batch, two across tiles
            step -= step % width
        self._finite = torch.ones((), dtype=torch.bool, device=self.device)
        for block, start in enumerate(range(0, num, NOISE_BLOCK)):
            size = min(NOISE_BLOCK, num - start)
            noise = self._noise(SHARED_NOISE_INDEX, block, size, shape)
            used, tile_rows = n_inputs * size, n_inputs * width
            for lo in range(0, used, step):
                hi = min(lo + step, used)
                batch = buffer[: hi - lo]
                row = lo
                while row < hi:
                    tile, r = divmod(row, tile_rows)
                    first = tile * width  # the tile's first draw; it has w of them
                    w = min(width, size - first)
                    i, j = divmod(r, w)
                    end = min(hi, tile * tile_rows + n_inputs * w)
                    whole = (end - row) // w if j == 0 else 0
                    if whole:
                        torch.add(chunk[i : i + whole].unsqueeze(1),
                                  noise[first : first + w].unsqueeze(0),
                                  out=batch[row - lo : row - lo + whole * w].view(
                                      whole, w, *shape))
                        row += whole * w
                    else:
                        part = min(w - j, end - row)
                        torch.add(chunk[i], noise[first + j : first + j + part],
                                  out=batch[row - lo : row - lo + part])
                        row += part
                logits = self._logits(batch)
                if tops is None:
                    tops = torch.empty(len(votes), dtype=logits.dtype, device=self.device)
                    n_classes = logits.shape[1]
                elif logits.shape[1] != n_classes:
                    raise ValueError("The network returned a varying number of classes.")
                # the row maxima carry every non-finite logit that could change a vote
                # (as in _votes)
                torch.max(logits, 1, out=(tops[lo:hi], votes[lo:hi]))
            self._finite &= all_finite(tops[:used])
            if counts is None:
                counts = torch.zeros(n_inputs * n_classes, dtype=torch.int64, device=self.device)
            # (not bincount: on a GPU it reads the largest vote back to the host)
            counts.index_add_(0, votes[:used].add_(self._row_offsets(n_inputs, n_classes,
                                                                     size, width)),
                              ones[:used])
        self._check_finite()
        return counts.view(n_inputs, -1)

    def _row_offsets(self, n_inputs: int, n_classes: int, size: int, width: int):
        """(row's input) · n_classes for every row of a block of ``size`` shared draws in
        tiles of ``width``: the same for every full block, so kept across chunks."""
        key = (n_inputs, n_classes, size, width)
        if key not in self._offsets:
            inputs = torch.arange(0, n_inputs * n_classes, n_classes, device=self.device)
            self._offsets[key] = torch.cat([inputs.repeat_interleave(min(width, size - first))
                                            for first in range(0, size, width)])
        return self._offsets[key]


# Noise one tile of shared draws may hold: small enough for a core's L1 data cache (32–48
# KiB) next to the rows being written.  For a 64-feature MLP the loop ran fastest with
# tiles of 32–64 draws (8–16 KiB), against whole blocks and against 16 or 256
# (docs/benchmarks.md, shared noise).
SHARED_NOISE_TILE_BYTES = 16 * 2**10


def shared_noise_tile(row_bytes: int) -> int:
    """Draws per tile of a shared noise block for inputs of ``row_bytes`` bytes each:
    as many as fit in ``SHARED_NOISE_TILE_BYTES``, at least one, at most a block.

    Parameters
    ----------
    row_bytes : int
        Bytes of one input.
    """
    return min(NOISE_BLOCK, max(1, SHARED_NOISE_TILE_BYTES // max(1, row_bytes)))


def sample_counts(module, X, sigma, nums, *, batch_size, random_state, index_offset, streams,
                  precision="fp32", progress=None, shared_noise=False, active=None,
                  noise="gaussian", noise_step=None):
    """Per-stream vote counts for all inputs, as numpy arrays of shape (N, C).

    The one sampling loop: CERTIFY, PREDICT, ``class_counts`` and the sequential tests'
    rounds all call it.  ``streams[j]`` (an int or a tuple of ints) names the noise of
    the ``nums[j]`` draws per input.  ``active`` (a boolean mask over the inputs)
    evaluates only the inputs it marks; the others get zero counts and cost nothing.
    Counts never depend on which other inputs are active, on ``batch_size`` or on
    chunking: the noise of each input is seeded by its global index alone.  Without
    ``shared_noise`` rows reach the network input by input, draws in order (record_votes).
    ``noise="discrete-gaussian"`` draws the Gaussian rounded to the lattice of step
    ``noise_step`` (:mod:`smoothsk.certification.noise`); inputs must lie on it.
    """
    module, _ = as_base_network(module)
    sigma = check_sigma(sigma)
    batch_size = check_positive_int(batch_size, "batch_size")
    index_offset = check_index_offset(index_offset)
    if active is not None and not isinstance(X, torch.utils.data.DataLoader):
        # Evaluate the active inputs alone (their global indices keep their noise), so
        # that a round with few undecided inputs costs only those.
        active = np.asarray(active, dtype=bool)
        if len(active) != len(X):
            raise ValueError(f"active has {len(active)} entries for {len(X)} inputs.")
        rows = np.flatnonzero(active)
        if not len(rows):
            return [np.zeros((len(active), 0), dtype=np.int64) for _ in streams]
        parts = sample_counts(
            module, take_rows(X, rows), sigma, nums, batch_size=batch_size,
            random_state=random_state, index_offset=global_indices(index_offset,
                                                                   len(active))[rows],
            streams=streams, precision=precision, progress=progress,
            shared_noise=shared_noise, noise=noise, noise_step=noise_step)
        results = []
        for counts in parts:
            total = np.zeros((len(active), counts.shape[1]), dtype=counts.dtype)
            total[rows] = counts
            results.append(total)
        return results
    seed = base_seed(random_state)
    shared_noise = check_shared_noise(shared_noise)
    lattice = make_noise(noise, sigma, noise_step, module_device_dtype(module)[0])
    samplers = [NoiseSampler(module, sigma, batch_size, seed, s, precision, shared_noise,
                             lattice) for s in streams]
    device, dtype = samplers[0].device, samplers[0].dtype
    chunk_size = noise_chunk_size(batch_size, min(nums), shared_noise)
    heap.raise_heap_thresholds()
    parts = [[] for _ in streams]  # (rows, counts) of every evaluated chunk
    seen, trimmer = 0, heap.HeapTrimmer()
    with evaluating(module):
        for chunk in input_chunks(X, chunk_size):
            size = len(chunk)
            first = chunk_indices(index_offset, seen, size)
            rows = np.arange(seen, seen + size)
            if active is not None:
                local = np.flatnonzero(active[seen : seen + size])
                if len(local) < size:
                    chunk = chunk[torch.as_tensor(local, dtype=torch.long)]
                    first = first + local if np.ndim(first) == 0 else first[local]
                    rows = rows[local]
            seen += size
            if len(rows):
                chunk = chunk.to(device=device, dtype=torch.float64 if lattice else dtype)
                if not all_finite(chunk):
                    raise ValueError("X contains NaN or infinity; certify needs finite inputs.")
                if lattice is not None:
                    chunk = lattice.to_lattice(chunk, dtype)
                for sampler, num, out in zip(samplers, nums, parts):
                    out.append((rows, sampler.counts(chunk, first, num).cpu().numpy()))
                trimmer.evaluated(chunk, sum(nums))
            if progress is not None:
                progress(size)
    heap.release_free_memory()
    if seen == 0:
        raise ValueError("X is empty; pass at least one input.")
    if isinstance(index_offset, np.ndarray) and seen != len(index_offset):
        raise ValueError(f"index_offset holds {len(index_offset)} indices for {seen} inputs.")
    if active is not None and len(active) != seen:
        raise ValueError(f"active has {len(active)} entries for {seen} inputs.")
    widths = {counts.shape[1] for out in parts for _, counts in out}
    if len(widths) > 1:
        raise ValueError("The network returned a varying number of classes.")
    width = widths.pop() if widths else 0
    results = []
    for out in parts:
        if active is None:
            results.append(np.concatenate([counts for _, counts in out]))
            continue
        total = np.zeros((seen, width), dtype=np.int64)
        for rows, counts in out:
            total[rows] = counts
        results.append(total)
    return results


CLASS_COUNTS_CONSTRAINTS = {**SAMPLING_CONSTRAINTS, "num": POSITIVE_INT}


@validate_params(CLASS_COUNTS_CONSTRAINTS, prefer_skip_nested_validation=True)
def class_counts(
    module: torch.nn.Module,
    X,
    sigma: float,
    num: int,
    *,
    batch_size: int = 1000,
    random_state=None,
    index_offset: int = 0,
    precision: str = "fp32",
    progress=None,
    shared_noise: bool = False,
    noise: str = "gaussian",
    noise_step=None,
) -> np.ndarray:
    """Counts of ``argmax f(x + δ)`` over ``num`` Gaussian draws per input.

    This is the Monte Carlo estimate behind the smoothed classifier:
    ``counts[i, c] / num`` estimates ``P(f(x_i + δ) = c)``.  Uses the prediction
    noise stream (independent of the streams CERTIFY uses).

    Parameters
    ----------
    module : torch.nn.Module or fitted classifier
        Base network returning logits of shape ``(batch, n_classes)``, or any fitted
        classifier (:func:`smoothsk.certification.adapters.as_base_network`).
    X : array, tensor, Dataset or DataLoader
        Inputs of shape ``(N, ...)``; Dataset items may be ``(x, y)`` pairs.
    sigma : float > 0
        Noise level σ.
    num : int >= 1
        Noisy draws per input.
    batch_size : int
        Noisy rows per forward pass (peak memory is proportional to it, not to ``num``).
    random_state : int, RandomState or None
        With ``index_offset + i``, determines the noise of input ``i``.
    index_offset : int or array of int
        Global index of ``X[0]`` (the others follow), so that split calls reproduce one
        big call; or an array with every input's global index (e.g. every 20th image).
    precision : {"fp32", "bf16", "fp16"}
        Arithmetic of the network's forward pass (autocast); noise is always fp32.
    progress : callable or None
        Called with the number of inputs finished after each chunk (e.g. a tqdm bar's
        ``update``).
    shared_noise : bool
        Every input uses the same noise draws (each block drawn once per chunk of
        inputs): each input's draws are still i.i.d. ``N(0, σ² I)``, so every per-input
        estimate and guarantee is unchanged; only inputs' results become correlated
        with each other (docs/certification.md).  Much faster where drawing noise costs
        more than the network (small tabular models).
    noise : {"gaussian", "discrete-gaussian"}
        ``"discrete-gaussian"``: the Gaussian rounded to the lattice the inputs lie on,
        formed exactly, so that the guarantee holds in floating point
        (:mod:`smoothsk.certification.noise`, docs/certification.md).
    noise_step : float, Fraction, str or None
        The lattice step for ``"discrete-gaussian"`` (None: 1/255, 8-bit images); inputs
        off the lattice are refused.
    """
    num = check_positive_int(num, "num")
    (counts,) = sample_counts(
        module, X, sigma, [num], batch_size=batch_size, random_state=random_state,
        index_offset=index_offset, streams=[STREAM_PREDICTION], precision=precision,
        progress=progress, shared_noise=shared_noise, noise=noise, noise_step=noise_step,
    )
    return counts


