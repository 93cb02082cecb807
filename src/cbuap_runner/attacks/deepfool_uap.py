"""UAP: a universal perturbation accumulated from DeepFool steps.

Moosavi-Dezfooli, Fawzi, Fawzi and Frossard, "Universal adversarial perturbations", CVPR 2017, Section 3,
Algorithm 1; the authors' code is LTS4/universal on GitHub (python/universal_pert.py, python/deepfool.py).
DeepFool itself: Moosavi-Dezfooli, Fawzi and Frossard, CVPR 2016 (multi-class, L2).

The loop, as the reference: v = 0 (or the warm start `init`); every pass shuffles the crafting images and
visits them in that order; an image x that the CURRENT v does not fool (argmax f(x + v) == argmax f(x)) gets
a DeepFool run started at x + v; its step is added to v only if DeepFool converged in time, and v is then projected
onto the ε-ball. After each pass the crafting-set fooling rate is measured. DeepFool (L2): the candidates are
the `deepfool.candidates` most likely classes at the start (the current label first); each iteration takes
w_k = ∇f_k − ∇f_label and f_k − f_label at the current point for every other candidate k, picks the k with
the smallest |f_k|/‖w_k‖₂, r_i = (|f_k|/‖w_k‖₂ + 1e-4)·w_k/‖w_k‖₂, r_tot += r_i, moves the point to
x + (1 + overshoot)·r_tot and stops once the label changes or after `deepfool.iters` iterations; it returns
(1 + overshoot)·r_tot. The 1e-4 term is the one of the DeepFool authors' PyTorch code (LTS4/DeepFool); the
numpy deepfool.py of LTS4/universal omits it.

Where paper and code are silent, or where this implementation differs:
- Pixel range (the one place the algorithm differs): the model here only ever sees clamp(x + δ, 0, 1), so
  DeepFool runs on the classifier the attack faces, u ↦ f(clamp(u, 0, 1)): its point is x + v + (1 + overshoot)·r_tot
  and its gradients are taken through the clamp, zero in a pixel held at 0 or 1 (`deepfool.clamp=held`, the
  default). `deepfool.clamp=point` takes f's gradients at the clamped point instead, so part of each step goes into
  pixels the clamp then cuts (the earlier behaviour; a stronger but not minimal step). docs/method.md gives the
  measurement behind the choice. The reference never clamps (its inputs are mean-subtracted, unbounded).
- Acceptance, as the reference: a step is added only if `iter < max_iter_df - 1`, i.e. DeepFool changed the label
  within `deepfool.iters` − 2 iterations; DeepFool stops there, since later iterations can never be added.
- L2 projection goes INTO the ball (v is rescaled only when ‖v‖₂ > ε). The reference's proj_lp rescales
  every v onto the sphere ‖v‖₂ = ε, also one inside the ball: a known bug, not copied. L∞: clipping, as there.
- Stopping: the reference stops when the crafting-set fooling rate reaches 1 − δ. Here every attack shares
  the validation-based rule of stopping.py (`fooling_target`, `patience`); with neither set all `passes`
  passes run and the last v is returned, as the reference returns its last v. The crafting-set fooling rate
  is still measured after each pass and recorded in the history.
- `deepfool.norm=linf` (attack=uap_linf, not in the reference): the DeepFool step in L∞ geometry, nearest
  boundary by |f_k|/‖w_k‖₁ and r = (|f_k| + 1e-4)/‖w_k‖₁·sign(w_k); the rest of the loop is unchanged.
- `y` is not used: as in the reference, "fooled" compares with the model's clean prediction.

Batching, with the sequential semantics kept exactly:
- DeepFool runs batched over images; each image's run is independent of the others (eval mode), so row i
  equals a run on image i alone. The candidate gradients take one forward, then, for up to 8 images, one
  backward vmapped over the candidates (autograd's is_grads_batched) and, for more, one backward per
  candidate, each batched over the images. Measured on CPU (small_cnn, one thread, shared machine): the
  vmapped backward is 10-25 % faster than one backward per candidate at 1-8 images and 20 % slower at 32;
  replicating each image once per candidate with one backward was the slowest at every size (87 against
  45 ms at 32 images), torch.func vmap(jacrev) in between (2.9 against 1.3 ms per image at 64 images).
- The loop: the next images in the shuffled order are checked against the current v in one forward;
  DeepFool runs batched on the first `width` unfooled ones, all at the current v, and the runs are walked
  in order. A run that did not converge leaves v unchanged, so the next run (computed at the same v) is
  exactly what the sequential loop computes next; the first converged run changes v: it is applied and
  projected, every later run is discarded (DeepFool abandons them as soon as it converges) and their images
  are checked again against the new v. On CUDA `width` follows the recent acceptance rate p (about 1/p:
  speculation); on CPU it is 1, because there a batch of rows costs about as much per row as one row and
  discarded rows are pure loss (measured: 1.6 times the gradient work for no gain). The result equals the
  one-image-at-a-time loop up to floating-point differences of batched kernels, which
  tests/test_deepfool.py::test_batched_craft_equals_per_image_reference checks (in float64, both widths)
  against a literal per-image transcription of universal_pert.py. In float32 such differences can flip a
  decision near a boundary, after which the two runs follow different (equally valid) trajectories.
- `deepfool.batching=relaxed` gives the sequential semantics up where it pays on a CPU: the pass goes in chunks
  of `deepfool.chunk` images; DeepFool runs batched on every image of the chunk that v does not fool, all at the
  v of the chunk's start; the converged steps are then walked in order and each is added (and v projected) only
  if its image is still not fooled by the current v. A step is thus computed at a v that is up to a chunk old.
  docs/PERFORMANCE.md gives its measured speed and fooling rate beside the exact loop's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..schema import AttackConfig, Batching, Clamp, Norm, fail, non_negative, positive
from .engine import Budget, Checkpoint, CraftResult, PassLoop, RunOptions, frozen, init_delta, pass_record, predict
from .threat import ThreatModel, make_threat

_TINY = 1e-12
_VMAP_ROWS = 8  # up to this many images the candidate gradients take one vmapped backward


@dataclass
class DeepFoolConfig:
    overshoot: float = 0.02  # DeepFool's (1 + overshoot) on the accumulated step
    iters: int = 10  # the reference's max_iter_df: a step is added to v only if the label changed within iters - 2
    clamp: Clamp = Clamp.held  # held: DeepFool differentiates through the clamp; point: at the clamped point (docs/method.md)
    candidates: int = 10  # the most likely classes DeepFool considers (the current one included)
    norm: Norm = Norm.l2  # l2: the reference DeepFool; linf: the DeepFool step in L-inf geometry
    batching: Batching = Batching.exact  # exact: the sequential loop's result; relaxed: chunks of images share one v
    chunk: int = 32  # relaxed: images per chunk

    def check(self, prefix: str) -> None:
        for key in ("iters", "candidates", "chunk"):
            positive(f"{prefix}.{key}", getattr(self, key))
        if self.iters < 3:
            fail(f"{prefix}.iters", self.iters, "must be >= 3: a step counts only if DeepFool changed the label "
                 "within iters - 2 iterations (the reference's iter < max_iter_df - 1)")
        non_negative(f"{prefix}.overshoot", self.overshoot)


@dataclass
class DeepFoolUAPConfig(AttackConfig):
    deepfool: DeepFoolConfig = field(default_factory=DeepFoolConfig)

    def check(self, prefix: str, num_classes: int) -> None:
        super().check(prefix, num_classes)
        self.deepfool.check(f"{prefix}.deepfool")


@dataclass
class DeepFoolResult:
    """Per-image outcome of a batched DeepFool run."""

    step: Tensor  # [B,C,H,W] (1 + overshoot)·r_tot
    converged: Tensor  # [B] bool: the label changed within max_iter iterations
    iters: Tensor  # [B] int64: iterations run
    label: Tensor  # [B] int64: the label at the final point


def _take(t: Tensor, index: Tensor) -> Tensor:
    """t[i, index[i], ...] for t [B,k,...]."""
    return t[torch.arange(t.shape[0], device=t.device), index]


def _forward(model: nn.Module, u: Tensor, clamp: str) -> tuple[Tensor, Tensor]:
    """The leaf (requiring grad) and the logits [B,K] at the point u, with the graph kept for `_candidate_grads`.
    clamp: `held` differentiates f(clamp(u, 0, 1)) in u (zero where a pixel is held at 0 or 1); `point` evaluates f at
    clamp(u, 0, 1) and differentiates f there."""
    with torch.enable_grad():
        if clamp == "point":
            xi = u.clamp(0, 1).detach().requires_grad_(True)
            return xi, model(xi)
        xi = u.detach().requires_grad_(True)
        return xi, model(xi.clamp(0, 1))


def _candidate_grads(xi: Tensor, z: Tensor, cand: Tensor) -> Tensor:
    """The input gradients [B,k,...] of the candidate logits cand [B,k] from a `_forward` at xi: one vmapped
    backward over the k candidates (small B) or one backward per candidate (large B)."""
    b, k = cand.shape
    if b <= _VMAP_ROWS:
        onehot = torch.zeros(k, *z.shape, dtype=z.dtype, device=z.device).scatter_(2, cand.T.unsqueeze(2), 1.0)
        (g,) = torch.autograd.grad(z, xi, grad_outputs=onehot, is_grads_batched=True)
        return g.transpose(0, 1)
    zc = z.gather(1, cand)
    return torch.stack([torch.autograd.grad(zc[:, j].sum(), xi, retain_graph=j < k - 1)[0] for j in range(k)], 1)


def _deepfool_step(f: Tensor, w: Tensor, norm: str) -> Tensor:
    """r_i [B,D] towards the nearest linearised boundary, from logit gaps f [B,k-1] and their gradients w [B,k-1,D]."""
    f = f.abs()
    if norm == "l2":
        dual = w.norm(dim=2).clamp_min(_TINY)
        pert = f / dual
        best = pert.argmin(1)  # the first minimum, as the reference's strict `pert_k < pert`
        return (_take(pert, best) + 1e-4).unsqueeze(1) * _take(w, best) / _take(dual, best).unsqueeze(1)
    dual = w.abs().sum(2).clamp_min(_TINY)
    best = (f / dual).argmin(1)
    return ((_take(f, best) + 1e-4) / _take(dual, best)).unsqueeze(1) * _take(w, best).sign()


def deepfool(model: nn.Module, x: Tensor, *, norm: str = "l2", num_candidates: int = 10, overshoot: float = 0.02,
             max_iter: int = 10, first_only: bool = False, clamp: str = "held") -> DeepFoolResult:
    """Batched DeepFool from x [B,C,H,W] (`clamp`: how the [0,1] pixel range enters, see `_forward`); row i equals a
    run on x_i alone.

    With `first_only`, rows after the first converged row are abandoned as soon as it converges (their
    `converged` is False and their step partial): all that the sequential UAP loop can use.
    """
    scale, b = 1 + overshoot, x.shape[0]
    xi, z = _forward(model, x, clamp)  # one forward per iteration: it checks the last step and feeds the next
    cand = z.detach().topk(max(2, min(num_candidates, z.shape[1])), dim=1).indices  # the current label first
    label = cand[:, 0]
    r_tot = torch.zeros_like(x)
    iters = torch.zeros(b, dtype=torch.long, device=x.device)
    converged = torch.zeros(b, dtype=torch.bool, device=x.device)
    final = label.clone()
    rows = torch.arange(b, device=x.device)  # the runs still going; xi and z hold their current points
    for _ in range(max_iter):
        if rows.numel() == 0:
            break
        g = _candidate_grads(xi, z, cand[rows]).flatten(2)
        zc = z.detach().gather(1, cand[rows])
        r = _deepfool_step(zc[:, 1:] - zc[:, :1], g[:, 1:] - g[:, :1], norm)
        r_tot[rows] += r.view(-1, *x.shape[1:])
        iters[rows] += 1
        xi, z = _forward(model, x[rows] + scale * r_tot[rows], clamp)
        now = z.detach().argmax(1)
        flipped = now != label[rows]
        final[rows], converged[rows] = now, flipped
        keep = ~flipped
        if first_only and bool(flipped.any()):
            first = converged.nonzero()[0, 0]
            converged[first + 1:] = False
            keep &= rows < first
        if not bool(keep.all()):  # the runs that stop leave the batch (a fresh forward: the graph is per batch)
            rows = rows[keep]
            if rows.numel():
                xi, z = _forward(model, x[rows] + scale * r_tot[rows], clamp)
    return DeepFoolResult(step=scale * r_tot, converged=converged, iters=iters, label=final)


class _Speculation:
    """How many unfooled images one batched DeepFool call takes and how many images one fooled-check covers.

    Speculating (about 1/p images per call for the recent acceptance rate p) pays only where a batch of rows
    costs little more than one row: on CUDA. On CPU one row costs about as much per row as a batch (small_cnn,
    one thread) and the rows after an accepted one are thrown away, so the width stays 1 there. A check covers
    enough images for twice `width` unfooled ones at the recent unfooled fraction. The choices depend only on
    the run's own history, never on timings, so a run is reproducible.
    """

    DECAY = 0.9
    MIN_WIDTH = 1
    MIN_WINDOW = 4
    ADAPTIVE: bool | None = None  # None: on CUDA only

    def __init__(self, batch_size: int, device: torch.device) -> None:
        self.batch_size = batch_size
        self.adaptive = device.type == "cuda" if self.ADAPTIVE is None else self.ADAPTIVE
        self.accept = self.unfooled = 1.0  # EMAs: converged DeepFool runs, unfooled checked images

    @property
    def width(self) -> int:
        """Unfooled images per DeepFool call."""
        want = math.ceil(1 / max(self.accept, 1e-3) - 1e-6) if self.adaptive else 1
        return max(self.MIN_WIDTH, min(self.batch_size, want))

    @property
    def window(self) -> int:
        """Images per fooled-check."""
        want = math.ceil(2 * self.width / max(self.unfooled, 1e-3))
        return max(self.MIN_WINDOW, self.width, min(self.batch_size, want))

    def observe_check(self, checked: int, unfooled: int) -> None:
        """Record one fooled-check."""
        self.unfooled = self.DECAY * self.unfooled + (1 - self.DECAY) * unfooled / max(checked, 1)

    def observe_runs(self, used: int, accepted: bool) -> None:
        """Record `used` DeepFool runs in order, the last of them accepted if `accepted`."""
        for i in range(used):
            self.accept = self.DECAY * self.accept + (1 - self.DECAY) * float(accepted and i == used - 1)


def accept_iters(cfg: DeepFoolUAPConfig) -> int:
    """Iterations within which DeepFool must change the label for its step to be added: the reference's
    `iter < max_iter_df - 1` with max_iter_df = deepfool.iters. Later iterations never give an added step, so
    DeepFool runs at most this many."""
    return cfg.deepfool.iters - 2


def _run_deepfool(model: nn.Module, xb: Tensor, cfg: DeepFoolUAPConfig, first_only: bool = True) -> DeepFoolResult:
    """DeepFool with the attack's settings (by default abandoning the runs after the first converged one)."""
    d = cfg.deepfool
    return deepfool(model, xb, norm=d.norm, num_candidates=d.candidates, overshoot=d.overshoot,
                    max_iter=accept_iters(cfg), first_only=first_only, clamp=d.clamp)


class _RunStats:
    """DeepFool runs that the sequential loop would make (abandoned speculative rows aside): how many, their
    iterations, how many were added to v."""

    def __init__(self) -> None:
        self.runs = self.iters = self.accepted = 0

    def add(self, res: DeepFoolResult, used: int) -> None:
        self.runs += used
        self.iters += int(res.iters[:used].sum())
        self.accepted += int(res.converged[:used].sum())

    def record(self) -> dict[str, float | int]:
        return {"deepfool_runs": self.runs, "deepfool_iters": self.iters, "deepfool_accepted": self.accepted}


class _UAPState:
    """What a DeepFool UAP run carries from image to image and checkpoints: v, the steps added this pass, the pass's
    run statistics, the images visited before this pass and the speculation's EMAs."""

    def __init__(self, v: Tensor, spec: _Speculation) -> None:
        self.v, self.spec, self.added, self.stats, self.images = v, spec, 0, _RunStats(), 0

    def start_pass(self) -> None:
        self.added, self.stats = 0, _RunStats()

    def state_dict(self) -> dict:
        return {"v": self.v.clone(), "added": self.added, "stats": vars(self.stats).copy(), "images": self.images,
                "spec": {"accept": self.spec.accept, "unfooled": self.spec.unfooled}}

    def load_state_dict(self, state: dict) -> None:
        self.v = state["v"].to(self.v.device, self.v.dtype)
        self.added, self.images = state["added"], state["images"]
        vars(self.stats).update(state["stats"])
        self.spec.accept, self.spec.unfooled = state["spec"]["accept"], state["spec"]["unfooled"]


def _uap_pass(model: nn.Module, x: Tensor, clean: Tensor, order: Tensor, st: _UAPState, threat: ThreatModel,
              cfg: DeepFoolUAPConfig, loop: PassLoop) -> None:
    """One pass of Algorithm 1 over x[order] from the pass's position, image by image in effect; updates `st`."""
    spec, pos, n = st.spec, loop.position, order.numel()
    while pos < n:
        window = order[pos:pos + spec.window]
        with torch.no_grad():
            todo = (model((x[window] + st.v).clamp(0, 1)).argmax(1) == clean[window]).nonzero().flatten().tolist()
        spec.observe_check(window.numel(), len(todo))
        start, pos = pos, pos + window.numel()  # the whole window is visited unless v changes inside it
        while todo:
            pick, todo = todo[:spec.width], todo[spec.width:]
            conv = _run_deepfool(model, x[window[pick]] + st.v, cfg)
            flags = conv.converged.tolist()
            if True not in flags:  # v unchanged: the check of the rest of the window still holds
                spec.observe_runs(len(pick), False)
                st.stats.add(conv, len(pick))
                continue
            j = flags.index(True)
            st.stats.add(conv, j + 1)
            st.v = threat.project_(st.v + conv.step[j])
            st.added += 1
            spec.observe_runs(j + 1, True)
            pos = start + pick[j] + 1  # the images after it are checked again against the new v
            break
        loop.advance(pos, pos - start, st.state_dict)


def _uap_pass_relaxed(model: nn.Module, x: Tensor, clean: Tensor, order: Tensor, st: _UAPState, threat: ThreatModel,
                      cfg: DeepFoolUAPConfig, loop: PassLoop) -> None:
    """One pass in chunks (from the pass's position): DeepFool runs on every image of the chunk that v does not
    fool, all at the v of the chunk's start; the converged steps are then walked in order, each added (and v
    projected) only if its image is still not fooled by the current v."""
    chunks = order.split(cfg.deepfool.chunk)
    for c in range(loop.position, len(chunks)):
        idx = chunks[c]
        with torch.no_grad():
            todo = idx[model((x[idx] + st.v).clamp(0, 1)).argmax(1) == clean[idx]]
        if todo.numel():
            runs = _run_deepfool(model, x[todo] + st.v, cfg, first_only=False)
            st.stats.add(runs, todo.numel())
            changed = False
            for i in runs.converged.nonzero().flatten().tolist():
                if changed:
                    with torch.no_grad():
                        if model((x[todo[i]] + st.v).clamp(0, 1).unsqueeze(0)).argmax(1) != clean[todo[i]]:
                            continue
                st.v, changed = threat.project_(st.v + runs.step[i]), True
                st.added += 1
        loop.advance(c + 1, idx.numel(), st.state_dict)


def craft_deepfool_uap(model: nn.Module, x: Tensor, y: Tensor, cfg: DeepFoolUAPConfig, num_classes: int, *,
                       generator: torch.Generator | None = None, progress: bool = False,
                       init: Tensor | None = None, max_steps: int | None = None,
                       val: tuple[Tensor, Tensor] | None = None, checkpoint: Checkpoint | None = None) -> CraftResult:
    """DeepFool UAP (Algorithm 1): one δ [C,H,W]; stops by the shared rule of stopping.py (`val` images);
    `max_steps` visits exactly max_steps·batch_size images instead, over as many passes as they take; continues the
    state `checkpoint` holds and keeps it there."""
    device, n = x.device, x.shape[0]
    threat = make_threat(cfg.norm, cfg.eps)
    v = init_delta(threat, (1, *x.shape[1:]), cfg, device=device, generator=generator, init=init)[0].to(x.dtype)
    budget = Budget.of(cfg, max_steps)
    image_limit = None if max_steps is None else max_steps * cfg.batch_size
    st = _UAPState(v, _Speculation(cfg.batch_size, device))
    one_pass = _uap_pass if cfg.deepfool.batching == "exact" else _uap_pass_relaxed
    run = RunOptions("uap", generator, progress, checkpoint=checkpoint)
    with frozen(model), PassLoop(model, budget, val, n, run, device) as loop:
        if loop.resumed is not None:
            st.load_state_dict(loop.resumed)
        clean = predict(model, x, cfg.batch_size)
        for order in loop:
            if image_limit is not None:
                order = order[:image_limit - st.images]
            if loop.position == 0:
                st.start_pass()
            one_pass(model, x, clean, order, st, threat, cfg, loop)
            st.images += order.numel()
            rate = float((predict(model, (x + st.v).clamp(0, 1), cfg.batch_size) != clean).float().mean())
            record = pass_record(loop.passes + 1, rate, rate, None, order.numel(), steps_added=st.added,
                                 **st.stats.record())
            if image_limit is not None and st.images >= image_limit:
                loop.finish()
            loop.end_pass(record, st.v, st.state_dict, fr=f"{rate:.3f}")
    return CraftResult(delta=loop.monitor.result(st.v), converged=loop.monitor.converged, passes=loop.passes,
                       images_processed=st.images, history=loop.history, stats=run_totals(loop.history))


def run_totals(history: list[dict]) -> dict[str, float | None]:
    """Over every pass: DeepFool runs, their mean iterations and the share whose step was not added."""
    runs = sum(r["deepfool_runs"] for r in history)
    if not runs:
        return {"deepfool_runs": 0, "deepfool_mean_iters": None, "deepfool_unaccepted_share": None}
    return {"deepfool_runs": runs, "deepfool_mean_iters": round(sum(r["deepfool_iters"] for r in history) / runs, 4),
            "deepfool_unaccepted_share": round(1 - sum(r["deepfool_accepted"] for r in history) / runs, 4)}
