"""The recipes table against the authors' published training commands."""

import numpy as np
import pytest
import torch

import smoothsk
from smoothsk.cli import build_estimator, build_parser
from smoothsk.recipes import RECIPES, estimator_class, recipe, recipe_params

# jh-jeong/smoothmix EXPERIMENTS.MD, MNIST rows (every one: --lr 0.01 --lr_step_size 30
# --epochs 90, default --batch 256), transcribed flag by flag.
PUBLISHED_MNIST = {
    ("smoothadv", s): dict(epsilon=255 / 256, num_steps=10, warmup=10, num_noise=4)
    for s in (0.25, 0.5, 1.0)
} | {
    ("stability", s): dict(stability_weight=2.0) for s in (0.25, 0.5, 1.0)
} | {
    ("macer", 0.25): dict(num_noise=16, inverse_temperature=16.0, margin=8.0,
                          robustness_weight=16.0, deferred=30),
    ("macer", 0.5): dict(num_noise=16, inverse_temperature=16.0, margin=8.0,
                         robustness_weight=16.0, deferred=30),
    ("macer", 1.0): dict(num_noise=16, inverse_temperature=16.0, margin=8.0,
                         robustness_weight=6.0, deferred=30),
    ("consistency", 0.25): dict(num_noise=2, consistency_weight=10.0),
    ("consistency", 0.5): dict(num_noise=2, consistency_weight=5.0),
    ("consistency", 1.0): dict(num_noise=2, consistency_weight=5.0),
    ("smoothmix", 0.25): dict(num_noise=4, num_steps=2, step_size=1.0, mix_step=0, eta=5.0),
    ("smoothmix", 0.5): dict(num_noise=4, num_steps=4, step_size=1.0, mix_step=0, eta=5.0),
    ("smoothmix", 1.0): dict(num_noise=4, num_steps=8, step_size=1.0, mix_step=0, eta=5.0),
}


@pytest.mark.parametrize("key", sorted(PUBLISHED_MNIST))
def test_mnist_recipes_are_the_published_commands(key):
    method, sigma = key
    item = recipe(method, "mnist", sigma)
    for name, value in PUBLISHED_MNIST[key].items():
        assert item.params[name] == value, name
    assert (item.epochs, item.lr, item.loader_batch) == (90, 0.01, 256)
    assert [round(f * item.epochs) for f in item.milestones] == [30, 60]
    # the scripts that split a loader batch into m chunks step once per chunk
    chunked = method in ("smoothadv", "smoothmix", "consistency")
    assert item.batch_size == (256 // item.params["num_noise"] if chunked else 256)


def test_crt_cifar_recipe_is_the_authors_config():
    item = recipe("crt", "cifar10", 0.5)
    assert (item.epochs, item.lr, item.loader_batch) == (200, 0.1, 128)
    assert [round(f * item.epochs) for f in item.milestones] == [100, 150]


def test_every_recipe_names_its_source_and_builds_an_estimator():
    for (method, family, sigma), item in RECIPES.items():
        assert item.source and (item.method, item.family, item.sigma) == (method, family, sigma)
        params = recipe_params(item)
        clf = estimator_class(method)(**params)
        assert clf.max_epochs == item.epochs and clf.batch_size == item.batch_size


def test_shortened_schedule_keeps_its_shape_and_the_lr_follows_it():
    params = recipe_params(recipe("macer", "fashion-mnist", 0.5), epochs=6)
    assert params["deferred"] == 2 and params["max_epochs"] == 6
    params.update(num_noise=2, batch_size=32, random_state=0)
    X = np.random.default_rng(0).random((64, 8)).astype(np.float32)
    clf = smoothsk.MACERClassifier(**params).fit(X, np.arange(64) % 2)
    # the authors' scripts drop the rate one epoch after each milestone (drop_delay)
    assert clf.history[:, "event_lr"] == pytest.approx([0.01, 0.01, 0.01, 1e-3, 1e-3, 1e-4])


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(ValueError, match="No published recipe.*Known: .*macer/mnist"):
        recipe("macer", "imagenet", 0.5)
    with pytest.raises(ValueError, match="method must be one of"):
        estimator_class("magic")
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        recipe_params(recipe("gaussian", "mnist", 0.5), epochs=0)


def _train_args(*extra):
    return build_parser().parse_args(["train", "--dataset", "fashion-mnist", "--out", "x.pkl",
                                      *extra])


def test_cli_recipe_sets_the_published_settings_and_explicit_options_win():
    clf = build_estimator(_train_args("--method", "consistency", "--sigma", "0.5", "--recipe",
                                      "--epochs", "30", "--lr", "0.02"))
    assert clf.consistency_weight == 5.0 and clf.num_noise == 2 and clf.batch_size == 128
    assert clf.max_epochs == 30 and clf.lr == 0.02
    (name, scheduler), = clf.callbacks
    assert name == "lr_scheduler" and scheduler.kwargs["milestones"] == [11, 21]
    # without --recipe: the estimators' own defaults, one set for the CLI and Python
    plain = build_estimator(_train_args("--method", "consistency", "--sigma", "0.5"))
    default = smoothsk.ConsistencyClassifier()
    assert (plain.max_epochs, plain.batch_size, plain.lr, plain.optimizer,
            plain.lr_schedule) == (default.max_epochs, default.batch_size, default.lr,
                                   default.optimizer, default.lr_schedule)
    constant = build_estimator(_train_args("--method", "gaussian", "--lr-schedule", "constant"))
    assert constant.lr_schedule == "constant"
    sgd = build_estimator(_train_args("--method", "gaussian", "--optimizer", "sgd",
                                      "--momentum", "0.5"))
    assert sgd.optimizer is torch.optim.SGD and sgd.optimizer__momentum == 0.5


def test_cli_lr_schedule_needs_no_other_schedule():
    from smoothsk.cli import CommandError

    for other in (["--recipe", "--sigma", "0.5"], ["--lr-step", "5"]):
        with pytest.raises(CommandError, match="--lr-schedule applies without"):
            build_estimator(_train_args("--method", "gaussian", "--lr-schedule", "cosine",
                                        *other))


def test_cli_momentum_needs_sgd():
    from smoothsk.cli import CommandError

    with pytest.raises(CommandError, match="--momentum applies to SGD"):
        build_estimator(_train_args("--method", "gaussian", "--momentum", "0.9"))


def test_cli_recipe_needs_sigma():
    from smoothsk.cli import CommandError

    with pytest.raises(CommandError, match="--recipe needs --sigma"):
        build_estimator(_train_args("--method", "macer", "--recipe"))


def _rates(make_scheduler, epochs, *, step_after_epoch):
    """The rate each epoch trains at under a script's scheduler calls."""
    import warnings

    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = make_scheduler(optimizer)
    rates = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # step(epoch) is deprecated, and what they call
        for epoch in range(epochs):
            if not step_after_epoch:
                scheduler.step(epoch)          # locuslab/smoothing train.py: before
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if step_after_epoch:
                scheduler.step(epoch)          # smoothmix / smoothing-catrs train*.py: after
    return rates


@pytest.mark.parametrize("key,step_size,after", [
    (("smoothmix", "mnist", 0.5), 30, True),
    (("macer", "mnist", 0.25), 30, True),
    (("catrs", "mnist", 0.5), 50, True),
    (("catrs", "cifar10", 1.0), 50, True),
    (("gaussian", "cifar10", 0.25), 30, False),
])
def test_every_epoch_trains_at_the_authors_rate(key, step_size, after):
    """The authors' ``StepLR(step_size, 0.1)`` as their scripts call it, against the
    recipe's ``MultiStepLR`` stepped once after each epoch, as skorch's ``LRScheduler``
    does: the SmoothMix and CAT-RS scripts drop one epoch later than Cohen et al.'s."""
    item = RECIPES[key]
    theirs = _rates(lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size, 0.1),
                    item.epochs, step_after_epoch=after)
    callback = recipe_params(item)["callbacks"][0][1]
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = callback.policy(optimizer, **callback.kwargs)
    ours = []
    for _ in range(item.epochs):  # skorch: train the epoch, then step() in on_epoch_end
        ours.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    first_drop = theirs.index(min(theirs[: step_size + 2]))
    assert first_drop == step_size + (1 if after else 0)


def recipes_table_rows() -> list[str]:
    """docs/recipes.md's table, row by row, from :data:`RECIPES`."""
    order = sorted(RECIPES, key=lambda key: (key[1] != "cifar10", key[0] if key[1] == "cifar10"
                                             else "", key))
    rows = []
    for key in order:
        item = RECIPES[key]
        drops = [round(f * item.epochs) + item.drop_delay for f in item.milestones]
        params = ", ".join(f"`{k}={v:.6g}`" if isinstance(v, float) and v != round(v, 1)
                           else f"`{k}={v}`" for k, v in item.params.items()) or "–"
        rows.append(f"| {item.method} | {item.family} | {item.sigma:g} | {item.epochs} | "
                    f"{item.lr:g} ({', '.join(map(str, drops))}) | {item.batch_size} "
                    f"({item.loader_batch} / {item.chunks}) | {params} | {item.source} |")
    return rows


def test_the_docs_table_is_the_recipes_table():
    from pathlib import Path

    docs = (Path(__file__).parent.parent / "docs" / "recipes.md").read_text(encoding="utf-8")
    table = [line for line in docs.splitlines() if line.startswith("| ") and " | " in line
             and not line.startswith("| method")]
    assert sorted(table) == sorted(recipes_table_rows())
