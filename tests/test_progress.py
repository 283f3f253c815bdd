"""What a terminal shows while training runs: one short line per epoch, fold k/K and trial k/K with the
time elapsed and left, nothing from the libraries in quiet mode, and a cross-validation's summary that
says once why nothing was registered and where the run is recorded. A sweep's trial k/K: tests/test_sweep.py
(read from the output of the sweep it already runs)."""

from __future__ import annotations

import re

import pytest

from bilstm_exp.config.compose import compose
from bilstm_exp.config.schema import validate
from bilstm_exp.training import progress
from bilstm_exp.training.summary import Countdown, duration
from tests.conftest import run_module, tiny

MAX_LINE = 100


def test_an_epoch_line_fits_a_terminal_with_the_numbers_a_person_watches():
    logs = {"loss": 0.693147, "val_loss": 1234.5678, "val_accuracy": 0.5125, "val_auc": 0.5, "grad_norm_mean": 0.1,
            "time/epoch_s": 3.2, "throughput/train_tokens_per_s": 21530.3}
    line = progress.epoch_line(99, 100, logs, 3725.4)
    assert line == ("[bilstm-exp] epoch 100/100  train/loss 0.6931  val/loss 1234.5678  val/accuracy 0.5125  "
                    "3725.4 s")
    assert len(line) <= MAX_LINE


def test_keras_prints_its_own_line_only_when_asked():
    quiet = validate(compose(tiny("basic", "training.verbose=auto"))).training
    verbose = validate(compose(tiny("basic", "training.log_level=verbose"))).training
    explicit = validate(compose(tiny("basic", "training.verbose=2"))).training
    # stdout is not a terminal under pytest: the short line, or Keras's line per epoch
    assert progress.keras_verbose(quiet) == 0
    assert [type(c) for c in progress.callbacks(quiet, 3)] == [progress.EpochLine]
    assert progress.keras_verbose(verbose) == 2 and progress.callbacks(verbose, 3) == []
    assert progress.keras_verbose(explicit) == 2 and progress.callbacks(explicit, 3) == []


def test_the_progress_bar_counts_the_steps_that_ran_with_several_steps_per_call(capsys):
    """Ten batches in calls of four: Keras names the calls by steps 3, 7 and 11 (its last call ran two); the
    bar on a terminal says 4, 8 and 10 of 10, never 12 of 10."""
    import keras
    import numpy as np

    class Seen(progress.ShortProgbar):
        def _update_progbar(self, batch, logs=None):
            super()._update_progbar(batch, logs)
            shown.append(self.seen)

    shown: list[int] = []
    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile("adam", "binary_crossentropy", steps_per_execution=4)
    model.fit(rng.normal(size=(80, 4)), rng.integers(0, 2, size=(80, 1)), batch_size=8, epochs=2, verbose=1,
              callbacks=[Seen()])
    assert shown == [4, 8, 10, 4, 8, 10]
    assert "12/10" not in capsys.readouterr().out


def test_a_countdown_says_what_is_done_and_estimates_what_is_left():
    countdown = Countdown(4, "fold")
    assert re.fullmatch(r"\[bilstm-exp\] fold 1/4: 0 s elapsed", countdown.line(0))
    countdown.started -= 150  # as if the first two folds took 150 s
    assert countdown.line(2) == "[bilstm-exp] fold 3/4: 2 min 30 s elapsed, about 2 min 30 s left"
    assert [duration(s) for s in (42, 185, 7620)] == ["42 s", "3 min 05 s", "2 h 07 min"]


@pytest.mark.slow
def test_a_cross_validation_prints_short_epochs_its_folds_and_one_complete_summary(tmp_path):
    from tests.test_embeddings import write_vectors

    vectors = write_vectors(tmp_path)["glove"]
    mpl = tmp_path / "matplotlib"  # an empty cache: matplotlib builds its font list ("generated new fontManager")
    mpl.mkdir()
    done = run_module([*tiny("basic", "data.folds=2", "training.epochs=2", "model.dropout=0.3",
                             "model.embedding_dim=4", f"model.pretrained_embeddings={vectors}")],
                      tmp_path, timeout=900, env={"MPLCONFIGDIR": str(mpl)})
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    epochs = [line for line in out.splitlines() if " epoch " in line]
    assert len(epochs) == 4 and all(len(line) <= MAX_LINE for line in epochs), epochs
    assert "[bilstm-exp] fold 1/2: " in out
    assert re.search(r"\[bilstm-exp\] fold 2/2: .* elapsed, about .* left", out), out
    assert out.count("not registered") == 1, out
    summary = out[out.index("cross-validation run"):]
    assert "  recorded   sqlite:///" in summary and "  open       mlflow ui --backend-store-uri" in summary
    assert re.search(r"parent run \w+", out) and "fontManager" not in out, out
    assert not re.search(r"INFO|gensim|KeyedVectors", out), out
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    names = {r.info.run_name for r in client.search_runs([client.get_experiment_by_name("bilstm-exp").experiment_id])}
    parent = next(name for name in names if not name.endswith(("fold0", "fold1")))
    assert parent.startswith("cv2-basic-adam-") and "dropout0.3" in parent and "glove" in parent, names
