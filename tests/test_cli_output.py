"""What the CLI says during long steps and around the federation: progress, why a step stopped, no engine noise."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from common.federation.config import FedConfig
from fedgckd import progress
from fedgckd.commands.demo import tiny_caveat
from fedgckd.commands.simulate import _noise_note, _resume_note, update_size_line
from fedgckd.commands.train import early_stop_line


@pytest.fixture
def said(monkeypatch):
    """Everything the CLI console prints, as one whitespace-normalised string (read it by calling)."""
    from rich.console import Console

    con = Console(width=200, record=True, force_terminal=False)
    for mod in ("fedgckd.progress", "fedgckd.commands.simulate", "fedgckd.commands.demo"):
        monkeypatch.setattr(f"{mod}.console", con)
    return lambda: " ".join(con.export_text(clear=False).split())


def test_a_bar_that_never_started_prints_nothing(said):
    with pytest.raises(ValueError):
        with progress.progress_bar("features flat/train"):
            raise ValueError("data folder does not exist")
    assert said() == ""


def test_a_bar_that_stops_says_why(said):
    with pytest.raises(ValueError):
        with progress.progress_bar("pretrain") as bar:
            bar(3, 10, {"loss": 1.5})
            raise ValueError("boom")
    text = said()
    assert "pretrain" in text and "3/10" in text and "stopped: error (below)" in text
    with pytest.raises(KeyboardInterrupt):
        with progress.progress_bar("adapt") as bar:
            bar(1, 4)
            raise KeyboardInterrupt
    assert "stopped: interrupted" in said()


def test_pretrain_early_stop_is_said_from_the_history():
    hist = {"config": {"patience": 10}, "selected": {"epoch": 9}, "epochs": [{"epoch": e} for e in range(1, 20)]}
    assert early_stop_line(hist, 20) == ("stopped early after epoch 19 of 20: no source-val R1 gain for 10 epochs "
                                        "since epoch 9 (patience 10)")
    full = {**hist, "epochs": [{"epoch": e} for e in range(1, 21)]}
    assert early_stop_line(full, 20) is None
    assert "the trainer ended it" in early_stop_line({"epochs": [{}] * 5, "selected": {"epoch": 5}}, 20)


def noise(ratios, batches):
    return {"dp_sgd_noise_multiplier": 2.43, "trained_numbers": 131328, "records_per_step": batches,
            "noise_to_clip": ratios}


def test_noise_warning_only_when_the_whole_run_is_noise(said):
    """Per step 10-40 over 200 steps: summed over the run the noise is 0.71-2.8 times the largest possible signal
    at the best site, so the run can learn (the federated benchmark's R1 rose) and no warning is given."""
    _noise_note(noise([10.0, 40.0], [84, 23]), "last", steps=200)
    text = said()
    assert f"{10 / math.sqrt(200):.3g}-{40 / math.sqrt(200):.3g} times over the run's 200 steps" in text
    assert "follow noise" not in text


def test_noise_warning_when_even_the_best_site_is_swamped(said):
    _noise_note(noise([67.5, 101.0], [6, 4]), "last", steps=6)  # the demo: 2 rounds x 3 steps
    assert "training will mostly follow noise" in said()


def test_one_byte_figure_per_update_and_what_it_holds():
    result = {"model_bytes": {"update_bytes": 525312, "full_model_bytes": 108398088},
              "rounds": [{"bytes_from_site": {}}, {"bytes_from_site": {"site-0": 525568, "site-1": 525568}}]}
    line = update_size_line(result)
    assert line.startswith("update: 525,568 B sent per site per round = 0.48% of the full model (108,398,088 B")
    assert "525,312 B are the trained numbers" in line


def test_resume_says_which_round_it_continues_from(tmp_path, said):
    from server.checkpoint import ServerCheckpoint, save_checkpoint

    arrays = {"w": np.zeros(2, np.float32)}
    save_checkpoint(tmp_path, ServerCheckpoint(round=2, config={"rounds": 5}, run_key="k", student=arrays,
                                               teacher=arrays, run_log={}))
    assert _resume_note(tmp_path, 5) == 2
    assert "rounds 1-2 of 5 are done" in said() and "continuing with round 3" in said()


def test_the_run_simulation_notice_alone_is_dropped():
    from flwr.common.logger import warn_deprecated_feature

    from simulations.runner import quiet_flower_log

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    flwr_log = logging.getLogger("flwr")
    flwr_log.addHandler(handler)
    try:
        quiet_flower_log(verbose=False)
        warn_deprecated_feature("The `run_simulation` function is deprecated and will be removed")
        warn_deprecated_feature("Something else")
    finally:
        flwr_log.removeHandler(handler)
    assert len(seen) == 1 and "Something else" in seen[0]


def test_the_strategy_does_not_warn_about_federated_evaluation():
    from server.strategy import FedGCKD

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger("flwr").addHandler(handler)
    try:
        strategy = FedGCKD(task=None, run_log=None, cfg=FedConfig(sites=3))
    finally:
        logging.getLogger("flwr").removeHandler(handler)
    assert not [m for m in seen if "fraction_evaluate" in m]
    assert strategy.fraction_evaluate == 0.0 and strategy.min_evaluate_nodes == 0


def test_demo_caveat_counts_the_tiny_profile():
    text = tiny_caveat()
    assert "4 val identities (16 queries: one query moves R1 by 6.25)" in text and "noise" in text
