"""Quantus metrics by category, sized for the input, run on ONNX classifiers.

Every metric is a Quantus metric (``quantus`` 0.6) called with our :class:`OnnxClassifier`
as the torch model and an ``explain_func`` that runs the compiled attribution graph. Quantus
wraps a torch model in its ``PyTorchModel``; for the randomisation and input-invariance tests
that wrapper's weight surgery works on torch layers, so while a metric runs,
``quantus.helpers.utils.get_wrapped_model`` returns :class:`OnnxQuantusModel`, which
randomises the ONNX initializers layer group by layer group from the top (each randomised model
is recompiled by ``attach_methods``) and shifts the first ONNX layer.

Two metrics are ours, each a documented change of a Quantus one: ``completeness_gap`` is
Quantus' Completeness as a number (Quantus compares Σ map and f(x) − f(baseline) with exact
float ``==``, which no method passes), and ``input_invariance`` is Quantus' InputInvariance with
a tolerance of 1e-2 on max-normalised maps (Quantus' 1e-4 flags float round-off of compiled
gradients as a violation).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from onnxsplit.errors import OnnxSplitError

CATEGORIES = (
    "faithfulness",
    "robustness",
    "localisation",
    "complexity",
    "randomisation",
    "axiomatic",
)
# optional explainer back-ends that Quantus imports when they are found; a broken one
# (zennit without torchvision) must not stop the metrics, which never use them
_HIDDEN = {"zennit", "captum", "tf_explain", "tensorflow", "transformers"}


def import_quantus():
    """``import quantus`` with its optional explainer back-ends hidden from it."""
    if "quantus" in sys.modules:
        return sys.modules["quantus"]
    if importlib.util.find_spec("quantus") is None:
        raise OnnxSplitError(
            "the evaluation needs quantus: pip install --no-deps quantus==0.6.0 && pip install "
            "pandas tqdm cachetools opencv-python-headless (see docs/evaluate.md)"
        )
    original = importlib.util.find_spec

    def find_spec(name, package=None):
        if name.split(".")[0] in _HIDDEN:
            return None
        return original(name, package)

    importlib.util.find_spec = find_spec
    try:
        import quantus
    except Exception:
        for key in [k for k in sys.modules if k == "quantus" or k.startswith("quantus.")]:
            del sys.modules[key]
        raise
    finally:
        importlib.util.find_spec = original
    return quantus


@dataclass(frozen=True)
class MetricContext:
    """What the metric parameters are sized from."""

    channels: int
    height: int
    width: int
    num_classes: int
    seed: int = 0
    steps: int = 16  # perturbation steps of the faithfulness curves
    nr_runs: int = 20  # random subsets of FaithfulnessCorrelation
    nr_samples: int = 3  # perturbed inputs per sample of the robustness metrics
    mprt_stages: int = 3  # cascading randomisation steps, from the top
    logit_scale: float = 1.0  # σ of the model's outputs over the samples (the *_norm metrics)

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def features(self) -> int:
        return self.channels * self.pixels

    @property
    def flip_step(self) -> int:
        """PixelFlipping's features per step: a divisor of the pixel count (Quantus asserts it)
        closest to features / steps (the map is broadcast over the channels)."""
        target = self.features / self.steps
        divisors = [d for d in range(1, self.pixels + 1) if self.pixels % d == 0]
        return min(divisors, key=lambda d: (abs(math.log(d / target)), d))

    @property
    def patch(self) -> int:
        side = max(1, round(math.sqrt(self.pixels / self.steps)))
        return int(side)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    category: str
    higher_is_better: bool
    build: Callable[[MetricContext], object]
    description: str
    softmax: bool = False
    needs_mask: bool = False
    reduce: Callable = field(default=None)  # quantus output -> per-sample scores
    max_pixels: int | None = None  # only for inputs up to this many pixels
    quantus: bool = True


def _curve_mean(result) -> np.ndarray:
    return np.asarray([float(np.mean(np.asarray(c, dtype=np.float64))) for c in result])


def _mprt_mean(result) -> np.ndarray:
    """Mean similarity over the randomised stages (the 'original' entry left out)."""
    stages = [np.asarray(v, dtype=np.float64) for k, v in result.items() if k != "original"]
    return np.mean(np.stack(stages), axis=0)


def normalise_per_sample(a: np.ndarray, **_) -> np.ndarray:
    """Each map divided by its own max |value| (Quantus' default divides a whole batch by one
    max, which makes scores depend on the batch a sample lands in)."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim < 2:
        peak = np.max(np.abs(a))
        return a / peak if peak > 0 else a
    peak = np.max(np.abs(a), axis=tuple(range(1, a.ndim)), keepdims=True)
    return np.divide(a, peak, out=np.zeros_like(a), where=peak > 0)


def _metrics() -> dict[str, MetricSpec]:
    quantus = import_quantus()

    class CompletenessGap(quantus.Completeness):
        """|Σ a − (f(x) − f(x_baseline))| / |f(x) − f(x_baseline)| per sample (lower is better)."""

        def evaluate_batch(self, model, x_batch, y_batch, a_batch, **kwargs):
            n = x_batch.shape[0]
            flat = x_batch.reshape(n, -1)
            baseline = self.perturb_func(
                arr=flat, indices=np.stack([np.arange(flat.shape[1])] * n)
            ).reshape(x_batch.shape)
            x_in = model.shape_input(x_batch, x_batch.shape, channel_first=True, batched=True)
            b_in = model.shape_input(baseline, x_batch.shape, channel_first=True, batched=True)
            delta = model.predict(x_in)[np.arange(n), y_batch]
            delta = delta - model.predict(b_in)[np.arange(n), y_batch]
            total = a_batch.reshape(n, -1).astype(np.float64).sum(axis=1)
            return (np.abs(total - delta) / np.maximum(np.abs(delta), 1e-12)).tolist()

    def normalised(base, kind: str, scale: float):
        """``base`` (PixelFlipping or RegionPerturbation) on the scale of the model's logits:
        region perturbation curve / σ, pixel flipping (curve − f_k(x)) / σ, where σ is the
        standard deviation of the model's outputs over the evaluated samples (all classes;
        MetricContext.logit_scale). Comparable across models whose logits have other scales."""

        class Normalised(base):
            def evaluate_batch(self, model, x_batch, y_batch, a_batch, **kwargs):
                curves = np.asarray(
                    super().evaluate_batch(model, x_batch, y_batch, a_batch, **kwargs),
                    dtype=np.float64,
                )
                if kind == "flip":
                    x_in = model.shape_input(
                        x_batch, x_batch.shape, channel_first=True, batched=True
                    )
                    y = model.predict(x_in)[np.arange(x_batch.shape[0]), y_batch]
                    curves = curves - np.asarray(y, np.float64)[:, None]
                return (curves / scale).tolist()

        Normalised.__name__ = f"{base.__name__}Normalised"
        return Normalised

    class TolerantInputInvariance(quantus.InputInvariance):
        """Quantus' InputInvariance, maps compared with atol 1e-2 (after max-normalisation)."""

        def evaluate_batch(self, model, x_batch, y_batch, a_batch, **kwargs):
            # the shift itself: Quantus 0.6's perturb_batch leaves the first pixel unshifted
            shift = float(self.perturb_func.keywords["input_shift"])
            x_shifted = (x_batch + shift).astype(x_batch.dtype)
            x_shifted = model.shape_input(
                x_shifted, x_shifted.shape, channel_first=True, batched=True
            )
            shifted = model.add_mean_shift_to_first_layer(shift, x_shifted[:1].shape)
            a_shifted = self.explain_batch(shifted, x_shifted, y_batch)
            close = np.isclose(a_batch, a_shifted, atol=1e-2)
            return np.all(close, axis=tuple(range(1, a_batch.ndim))).astype(float).tolist()

    common = {
        "disable_warnings": True,
        "display_progressbar": False,
        "normalise_func": normalise_per_sample,
    }
    specs = [
        # -- faithfulness ---------------------------------------------------------------
        MetricSpec(
            "pixel_flipping",
            "faithfulness",
            False,
            lambda c: quantus.PixelFlipping(
                features_in_step=c.flip_step,
                perturb_baseline="black",
                **common,
            ),
            "PixelFlipping: mean logit of the class (area under the curve / steps) while the "
            "most relevant pixels are set to black in `steps` steps (lower is better)",
            reduce=_curve_mean,
        ),
        MetricSpec(
            "region_perturbation",
            "faithfulness",
            True,
            lambda c: quantus.RegionPerturbation(
                patch_size=c.patch,
                regions_evaluation=c.steps,
                perturb_baseline="black",
                **common,
            ),
            "RegionPerturbation (MoRF): mean drop of the class logit while the most relevant "
            "patches are blacked out (AOPC; higher is better)",
            reduce=_curve_mean,
        ),
        MetricSpec(
            "pixel_flipping_norm",
            "faithfulness",
            False,
            lambda c: normalised(quantus.PixelFlipping, "flip", c.logit_scale)(
                features_in_step=c.flip_step,
                perturb_baseline="black",
                **common,
            ),
            "PixelFlipping in units of the model's logit spread σ (the standard deviation of "
            "its outputs over the samples): mean of (f_k(x_t) − f_k(x)) / σ while the most "
            "relevant pixels are set to black in `steps` steps (lower is better)",
            reduce=_curve_mean,
            quantus=False,
        ),
        MetricSpec(
            "region_perturbation_norm",
            "faithfulness",
            True,
            lambda c: normalised(quantus.RegionPerturbation, "region", c.logit_scale)(
                patch_size=c.patch,
                regions_evaluation=c.steps,
                perturb_baseline="black",
                **common,
            ),
            "RegionPerturbation (MoRF) in units of the model's logit spread σ: AOPC / σ "
            "(higher is better)",
            reduce=_curve_mean,
            quantus=False,
        ),
        MetricSpec(
            "selectivity",
            "faithfulness",
            False,
            lambda c: quantus.Selectivity(patch_size=c.patch, perturb_baseline="black", **common),
            "Selectivity: mean class logit while patches are blacked out in order of relevance "
            "(lower is better)",
            reduce=_curve_mean,
        ),
        MetricSpec(
            "faithfulness_correlation",
            "faithfulness",
            True,
            lambda c: quantus.FaithfulnessCorrelation(
                nr_runs=c.nr_runs,
                subset_size=max(1, c.features // 16),
                perturb_baseline="black",
                return_aggregate=False,
                **common,
            ),
            "FaithfulnessCorrelation: Pearson correlation of the relevance of a random pixel "
            "subset with the drop of the class logit when it is blacked out (higher is better)",
        ),
        # -- robustness -----------------------------------------------------------------
        MetricSpec(
            "max_sensitivity",
            "robustness",
            False,
            lambda c: quantus.MaxSensitivity(
                nr_samples=c.nr_samples, lower_bound=0.1, normalise=True, **common
            ),
            "MaxSensitivity: largest relative change of the map under uniform noise of 0.1 "
            "(lower is better)",
        ),
        MetricSpec(
            "local_lipschitz",
            "robustness",
            False,
            lambda c: quantus.LocalLipschitzEstimate(
                nr_samples=c.nr_samples, perturb_std=0.1, **common
            ),
            "LocalLipschitzEstimate: largest ‖Δmap‖/‖Δx‖ under Gaussian noise of 0.1 "
            "(lower is better)",
        ),
        MetricSpec(
            "relative_input_stability",
            "robustness",
            False,
            lambda c: quantus.RelativeInputStability(
                nr_samples=c.nr_samples, return_nan_when_prediction_changes=False, **common
            ),
            "RelativeInputStability: largest relative map change over relative input change "
            "(lower is better)",
        ),
        # -- localisation ---------------------------------------------------------------
        MetricSpec(
            "pointing_game",
            "localisation",
            True,
            lambda c: quantus.PointingGame(**common),
            "PointingGame: the map's maximum lies in the object mask (higher is better)",
            needs_mask=True,
        ),
        MetricSpec(
            "attribution_localisation",
            "localisation",
            True,
            lambda c: quantus.AttributionLocalisation(
                abs=False, positive_attributions=True, **common
            ),
            "AttributionLocalisation: share of the positive relevance inside the mask "
            "(higher is better)",
            needs_mask=True,
        ),
        MetricSpec(
            "top_k_intersection",
            "localisation",
            True,
            lambda c: quantus.TopKIntersection(k=max(1, c.pixels // 20), **common),
            "TopKIntersection: share of the top 5 % pixels inside the mask (higher is better)",
            needs_mask=True,
        ),
        MetricSpec(
            "relevance_rank_accuracy",
            "localisation",
            True,
            lambda c: quantus.RelevanceRankAccuracy(**common),
            "RelevanceRankAccuracy: share of the |mask| highest pixels inside the mask "
            "(higher is better)",
            needs_mask=True,
        ),
        MetricSpec(
            "relevance_mass_accuracy",
            "localisation",
            True,
            lambda c: quantus.RelevanceMassAccuracy(abs=True, **common),
            "RelevanceMassAccuracy: share of |relevance| inside the mask (higher is better)",
            needs_mask=True,
        ),
        # -- complexity -----------------------------------------------------------------
        MetricSpec(
            "sparseness",
            "complexity",
            True,
            lambda c: quantus.Sparseness(**common),
            "Sparseness: Gini index of |map| (higher is better)",
        ),
        MetricSpec(
            "complexity",
            "complexity",
            False,
            lambda c: quantus.Complexity(**common),
            "Complexity: entropy of the |map| distribution (lower is better)",
        ),
        # -- randomisation --------------------------------------------------------------
        MetricSpec(
            "mprt",
            "randomisation",
            False,
            lambda c: quantus.MPRT(layer_order="top_down", seed=c.seed + 42, **common),
            "MPRT: Spearman correlation of |map| with the map after cascading randomisation "
            "of the ONNX weights from the top, mean over `mprt_stages` steps (lower is better)",
            reduce=_mprt_mean,
        ),
        MetricSpec(
            "random_logit",
            "randomisation",
            False,
            lambda c: quantus.RandomLogit(num_classes=c.num_classes, seed=c.seed + 42, **common),
            "RandomLogit: SSIM of the map with the map of a random other class (lower is better)",
        ),
        # -- axiomatic ------------------------------------------------------------------
        MetricSpec(
            "completeness",
            "axiomatic",
            True,
            lambda c: quantus.Completeness(normalise=False, **common),
            "Completeness (Quantus): Σ map == f(x) − f(black) in exact float arithmetic "
            "(share of samples; higher is better)",
        ),
        MetricSpec(
            "completeness_gap",
            "axiomatic",
            False,
            lambda c: CompletenessGap(normalise=False, **common),
            "Completeness gap (ours, from Quantus' Completeness): |Σ map − (f(x) − f(black))| "
            "/ |f(x) − f(black)| on the logit (lower is better)",
            quantus=False,
        ),
        MetricSpec(
            "input_invariance",
            "axiomatic",
            True,
            lambda c: TolerantInputInvariance(normalise=True, input_shift=-1, **common),
            "InputInvariance: the max-normalised map is unchanged (atol 1e-2) when the input "
            "is shifted by −1 and the first layer's bias absorbs the shift (share of samples; "
            "higher is better)",
        ),
        MetricSpec(
            "non_sensitivity",
            "axiomatic",
            False,
            lambda c: quantus.NonSensitivity(features_in_step=1, **common),
            "NonSensitivity: number of pixels where 'zero relevance' and 'no effect on the "
            "output' disagree (lower is better; one forward pass per pixel, small inputs only)",
            max_pixels=1024,
        ),
    ]
    return {s.name: s for s in specs}


_SPECS: dict[str, MetricSpec] | None = None


def metric_specs() -> dict[str, MetricSpec]:
    global _SPECS
    if _SPECS is None:
        _SPECS = _metrics()
    return _SPECS


METRIC_NAMES = (
    "pixel_flipping",
    "region_perturbation",
    "selectivity",
    "faithfulness_correlation",
    "max_sensitivity",
    "local_lipschitz",
    "relative_input_stability",
    "pointing_game",
    "attribution_localisation",
    "top_k_intersection",
    "relevance_rank_accuracy",
    "relevance_mass_accuracy",
    "sparseness",
    "complexity",
    "mprt",
    "random_logit",
    "completeness",
    "completeness_gap",
    "input_invariance",
    "non_sensitivity",
    "pixel_flipping_norm",
    "region_perturbation_norm",
)
# the default set: two or more per category, affordable on a 224 px model on a CPU
DEFAULT_METRICS = (
    "pixel_flipping",
    "region_perturbation",
    "faithfulness_correlation",
    "max_sensitivity",
    "local_lipschitz",
    "pointing_game",
    "attribution_localisation",
    "top_k_intersection",
    "relevance_rank_accuracy",
    "sparseness",
    "complexity",
    "mprt",
    "random_logit",
    "completeness_gap",
    "input_invariance",
    "non_sensitivity",
)


def resolve_metrics(names: list[str] | tuple[str, ...] | None) -> list[str]:
    """Metric names from names, category names, 'default' or 'all' (order kept, no repeats)."""
    if not names:
        names = ["default"]
    out: list[str] = []
    category_of = _category_of()
    for name in names:
        if name == "all":
            chosen = list(METRIC_NAMES)
        elif name == "default":
            chosen = list(DEFAULT_METRICS)
        elif name in CATEGORIES:
            chosen = [m for m in DEFAULT_METRICS if category_of[m] == name]
        elif name in METRIC_NAMES:
            chosen = [name]
        else:
            raise OnnxSplitError(
                f"unknown metric '{name}'; use one of {', '.join(METRIC_NAMES)}, a category "
                f"({', '.join(CATEGORIES)}), 'default' or 'all'"
            )
        out.extend(m for m in chosen if m not in out)
    return out


def _category_of() -> dict[str, str]:
    return {
        **dict.fromkeys(METRIC_NAMES[0:4], "faithfulness"),
        **dict.fromkeys(METRIC_NAMES[4:7], "robustness"),
        **dict.fromkeys(METRIC_NAMES[7:12], "localisation"),
        **dict.fromkeys(METRIC_NAMES[12:14], "complexity"),
        **dict.fromkeys(METRIC_NAMES[14:16], "randomisation"),
        **dict.fromkeys(METRIC_NAMES[16:20], "axiomatic"),
        **dict.fromkeys(METRIC_NAMES[20:22], "faithfulness"),
    }


CATEGORY_OF = _category_of()


# -- the Quantus model wrapper -------------------------------------------------------------
def _wrapper_class():
    from quantus.helpers.model.pytorch_model import PyTorchModel

    class OnnxQuantusModel(PyTorchModel):
        """Quantus' PyTorchModel whose weight surgery works on the ONNX initializers."""

        def state_dict(self) -> dict:
            return {}

        @property
        def random_layer_generator_length(self) -> int:
            return len(self.model.stage_counts())

        def get_random_layer_generator(self, order: str = "top_down", seed: int = 42):
            yield from self.model.randomisation_stages(order, seed)

        def add_mean_shift_to_first_layer(self, input_shift, shape):
            return self.model.shifted(float(input_shift))

    return OnnxQuantusModel


@contextlib.contextmanager
def onnx_models_in_quantus(fast_checks: bool = True):
    """While active, Quantus wraps OnnxClassifier models in OnnxQuantusModel and, with
    `fast_checks`, checks maps with check_attributions."""
    import quantus.helpers.asserts as qasserts
    import quantus.helpers.utils as qutils

    from onnxsplit.eval.onnxmodel import OnnxClassifier

    wrapper = _wrapper_class()
    original = qutils.get_wrapped_model
    original_check = qasserts.assert_attributions

    def get_wrapped_model(model, channel_first, softmax, device=None, model_predict_kwargs=None):
        if isinstance(model, OnnxClassifier):
            return wrapper(
                model=model,
                channel_first=channel_first,
                softmax=softmax,
                model_predict_kwargs=model_predict_kwargs,
                device=device,
            )
        return original(model, channel_first, softmax, device, model_predict_kwargs)

    qutils.get_wrapped_model = get_wrapped_model
    if fast_checks:
        qasserts.assert_attributions = check_attributions
    try:
        yield
    finally:
        qutils.get_wrapped_model = original
        qasserts.assert_attributions = original_check


def check_attributions(x_batch: np.ndarray, a_batch: np.ndarray) -> None:
    """What Quantus 0.6's ``asserts.assert_attributions`` checks before every metric and
    explanation, vectorised: Quantus tests for a uniform map by putting every value of the batch
    into a Python set (0.2–1.2 s per call on 224 px maps, a fifth of a method's evaluation
    time). Raises AssertionError where Quantus' check does."""
    assert isinstance(a_batch, np.ndarray), "the attributions must be a numpy array"
    x_shape, a_shape = np.shape(x_batch), np.shape(a_batch)
    assert x_shape[0] == a_shape[0], f"{a_shape[0]} attributions for {x_shape[0]} inputs"
    assert len(x_shape) == len(a_shape), f"attributions {a_shape} for inputs {x_shape}"
    kept = [d for d in a_shape[1:] if d != 1]
    dims = list(x_shape[1:])
    assert kept and (kept[0] == dims[0] or kept[-1] == dims[-1]), (
        f"attributions {a_shape} do not match inputs {x_shape}"
    )
    assert all(d in dims for d in kept), f"attributions {a_shape} do not match inputs {x_shape}"
    # each kept axis after those listed before its first occurrence (Quantus' order rule)
    assert all(dims.index(d) > dims.index(kept[i]) for d in kept for i in range(kept.index(d))), (
        f"attributions {a_shape} are not in the order of the inputs {x_shape}"
    )
    flat = a_batch.reshape(-1)
    assert not np.all(flat == 0), "the attributions are all zero"
    assert not np.all(flat == 1.0), "the attributions are all one"
    # a Python set keeps NaNs apart (nan != nan): only equal non-NaN values are uniform
    uniform = flat.size <= 1 or (not np.isnan(flat).any() and bool(np.all(flat == flat[0])))
    assert not uniform, "the attributions are uniform"
    assert not np.all(flat < 0.0), "the attributions are all negative"


def explain_func(model, inputs, targets, method: str = "gradient", **_) -> np.ndarray:
    """Quantus' explain_func: the compiled map of `method` (model is an OnnxClassifier)."""
    return model.explain(method, np.asarray(inputs), np.asarray(targets))


# metrics whose model inputs never depend on the model's outputs and that explain nothing
# (their maps are given): their predictions can be gathered first and run in large batches
PREFETCHED = frozenset(
    {
        "pixel_flipping",
        "region_perturbation",
        "selectivity",
        "faithfulness_correlation",
        "pixel_flipping_norm",
        "region_perturbation_norm",
        "completeness",
        "completeness_gap",
    }
)


def run_metric(
    spec: MetricSpec,
    ctx: MetricContext,
    model,
    method: str,
    x: np.ndarray,
    y: np.ndarray,
    a: np.ndarray,
    s: np.ndarray | None,
    batch_size: int,
    softmax: bool | None = None,
    seed: int | None = None,
    prefetch: int = 0,
    fast_checks: bool = True,
) -> np.ndarray:
    """Per-sample scores of one metric for one method (float64 [N], NaN where undefined).

    Quantus draws from numpy's and torch's global generators; both are seeded with `seed`
    (default: from the run's seed and the metric's name, onnxsplit.eval.shards.unit_seed).

    With `prefetch` > 0 and a metric of PREFETCHED, the metric first runs against a recording
    model (OnnxClassifier.recording) that collects every input Quantus asks about, those run
    in batches of `prefetch` into the model's prediction cache, and then the metric runs again
    from the same seed, each prediction now a cache lookup: Quantus' one onnxruntime call per
    perturbation step becomes a few large ones. An input the second pass asks about that the
    first did not is computed as usual. `fast_checks` False keeps Quantus' own (slow)
    attribution check instead of check_attributions."""
    from onnxsplit.eval.shards import unit_seed

    if seed is None:
        seed = unit_seed(ctx.seed, spec.name, 0)
    if prefetch > 0 and spec.name in PREFETCHED and hasattr(model, "recording"):
        try:
            with model.recording(prefetch):
                _seeded_call(
                    spec, ctx, model, method, x, y, a, s, batch_size, softmax, seed, fast_checks
                )
        except Exception:  # the real pass below computes what the recording did not
            pass
    result = _seeded_call(
        spec, ctx, model, method, x, y, a, s, batch_size, softmax, seed, fast_checks
    )
    scores = spec.reduce(result) if spec.reduce else result
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.shape[0] != x.shape[0]:
        raise OnnxSplitError(f"{spec.name}: {scores.shape[0]} scores for {x.shape[0]} samples")
    return scores


def _seeded_call(
    spec, ctx, model, method, x, y, a, s, batch_size, softmax, seed: int, fast_checks: bool
):
    """The Quantus metric's result, every global generator seeded with `seed` (and restored)."""
    import torch

    with contextlib.redirect_stdout(io.StringIO()):  # Quantus prints warnings when built
        metric = spec.build(ctx)
    state = np.random.get_state()  # Quantus draws from the global generators
    np.random.seed(seed)
    quiet = contextlib.redirect_stdout(io.StringIO())  # Quantus prints some warnings
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng())
        torch.manual_seed(seed)
        for context in (onnx_models_in_quantus(fast_checks), np.errstate(all="ignore"), quiet):
            stack.enter_context(context)
        stack.enter_context(warnings.catch_warnings())
        stack.callback(np.random.set_state, state)
        warnings.simplefilter("ignore")
        return metric(
            model=model,
            x_batch=x,
            y_batch=y,
            a_batch=None if a is None else a.copy(),
            s_batch=s,
            channel_first=True,
            explain_func=explain_func,
            explain_func_kwargs={"method": method},
            softmax=spec.softmax if softmax is None else softmax,
            batch_size=batch_size,
        )
