"""`genfleet evaluate`: a checkpoint's exact likelihood over a split, run as users run it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.records import JobStatus
from jobs.spec import load_spec_text
from tests.test_cli import Cli, genfleet, write

__all__ = ["genfleet"]  # the fixture, used by name below

TINY_YAML = """\
name: tiny-eval
model:
  type: pixelcnn
  params: {layers: 1, channels: 4, output_hidden: 8}
data:
  dataset: digits
train:
  epochs: 2
  batch_size: 64
  max_steps_per_epoch: 3
  num_samples: 4
"""

TINY_VAE_YAML = """\
name: tiny-vae
model:
  type: vae
  params: {latent_dim: 2, channels: 4, iw_samples: 2, iw_samples_final: 8}
data:
  dataset: digits
train:
  epochs: 1
  batch_size: 64
  max_steps_per_epoch: 2
  num_samples: 4
"""


def trained(genfleet: Cli, yaml_text: str, name: str) -> tuple[Path, dict]:
    """Train with `run-local`; return its out folder and its last metrics row."""
    out = genfleet.tmp_path / name
    spec = write(genfleet.tmp_path / f"{name}.yaml", yaml_text)
    result = genfleet("run-local", spec, "--out", out, "--no-progress", timeout=180)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, rows[-1]


def evaluated(genfleet: Cli, *args: str | Path) -> dict:
    result = genfleet("evaluate", *args, "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def tiny_run(genfleet: Cli) -> tuple[Path, dict]:
    return trained(genfleet, TINY_YAML, "run")


def test_evaluate_on_a_run_folder_reproduces_the_runs_own_final_test_number(
    genfleet: Cli, tiny_run: tuple[Path, dict]
) -> None:
    out, last = tiny_run
    result = evaluated(genfleet, out)  # the newest checkpoint below it, test split by default

    assert (result["split"], result["epoch"], result["images"]) == ("test", 2, 180)
    assert Path(result["checkpoint"]) == out / "checkpoints" / "epoch-0002"
    assert result["likelihood"] == "exact"
    assert result["test_bits_per_dim"] == pytest.approx(last["test_bits_per_dim"], rel=1e-12)
    assert result["test_nll_nats"] == pytest.approx(last["test_nll_nats"], rel=1e-12)
    val = evaluated(genfleet, out / "checkpoints" / "epoch-0002", "--split", "val")
    assert val["val_bits_per_dim"] == pytest.approx(last["val_bits_per_dim"], rel=1e-12)
    # Through pyarrow's file systems, as from s3:// or gs://: only the newest is copied out.
    train = evaluated(genfleet, f"file://{out / 'checkpoints'}", "--split", "train")
    assert train["images"] == 1455 and train["train_bits_per_dim"] > 0
    assert (train["epoch"], train["checkpoint"]) == (2, f"file://{out}/checkpoints/epoch-0002")


def test_evaluate_a_job_and_a_sweep_by_id_from_their_checkpoints(
    genfleet: Cli, tiny_run: tuple[Path, dict]
) -> None:
    out, last = tiny_run
    spec = load_spec_text(TINY_YAML)
    job_id = genfleet.queue.submit(spec)
    claimed = genfleet.queue.claim("test-worker", lease_seconds=60)
    assert claimed.job_id == job_id
    final = str(out / "checkpoints" / "epoch-0002")
    assert genfleet.queue.complete(claimed.lease, {"checkpoint": final}) is JobStatus.SUCCEEDED

    assert evaluated(genfleet, job_id)["test_bits_per_dim"] == pytest.approx(
        last["test_bits_per_dim"], rel=1e-12
    )
    human = genfleet("evaluate", job_id, "--no-progress").stdout
    assert f"test: 180 images, checkpoint of epoch 2 ({final}); likelihood exact" in human
    assert f"test_bits_per_dim            {last['test_bits_per_dim']:.6f}" in human

    sweep = load_spec_text(
        TINY_YAML + "kind: sweep\nsweep:\n  space:\n    train.lr: {choice: [0.001, 0.002]}\n"
    )
    sweep_id = genfleet.queue.submit(sweep)
    claimed = genfleet.queue.claim("test-worker", lease_seconds=60)
    assert claimed.job_id == sweep_id
    # Trial t2's run folder holds the checkpoints, as Ray Train's storage folder does.
    genfleet.store.add_checkpoint(sweep_id, 1, str(genfleet.tmp_path / "elsewhere"), trial="t1")
    genfleet.store.add_checkpoint(sweep_id, 2, str(out / "checkpoints"), trial="t2")
    trial = {"config": {"train.lr": 0.002}, "status": "completed", "metric": 2.0}
    genfleet.store.put_trial(sweep_id, "t2", trial)
    result = {"best_trial": "t2", "best_config": {"train.lr": 0.002}, "metric": "val_loss"}
    assert genfleet.queue.complete(claimed.lease, result) is JobStatus.SUCCEEDED
    assert evaluated(genfleet, sweep_id)["checkpoint"] == final


def test_evaluate_names_what_is_wrong_in_one_line(
    genfleet: Cli, tiny_run: tuple[Path, dict]
) -> None:
    out, _ = tiny_run
    cases = [
        (
            [genfleet.tmp_path / "nowhere"],
            1,
            f"error: checkpoint: {genfleet.tmp_path / 'nowhere'} is not a folder",
        ),
        (
            [
                out,
                "--spec",
                write(
                    genfleet.tmp_path / "g.yaml", TINY_YAML.replace("pixelcnn", "gated_pixelcnn")
                ),
            ],
            1,
            "holds a 'pixelcnn' model, the spec trains 'gated_pixelcnn'",
        ),
        (
            [
                out,
                "--spec",
                write(
                    genfleet.tmp_path / "c.yaml", TINY_YAML.replace("channels: 4", "channels: 8")
                ),
            ],
            1,
            "does not match the spec's model.params (size mismatch for",
        ),
        (
            [
                out,
                "--spec",
                write(genfleet.tmp_path / "m.yaml", TINY_YAML.replace("digits", "mnist")),
            ],
            1,
            "mnist: no data in",
        ),
        ([out, "--iw-samples", "5"], 1, "--iw-samples: only the vae's importance-weighted bound"),
        ([out, "--split", "holdout"], 2, "invalid choice: 'holdout'"),
    ]
    for args, code, message in cases:
        result = genfleet("evaluate", *args, "--no-progress")
        assert (result.returncode, result.stdout) == (code, ""), result.stderr
        assert message in result.stderr, result.stderr

    assert genfleet("evaluate", "abc123abc123").returncode == 2  # no such job, no such folder
    job_id = genfleet.seed_succeeded()  # finished without saving a checkpoint
    result = genfleet("evaluate", job_id)
    assert result.returncode == 1
    assert f"{job_id}: it has saved no checkpoint (status succeeded)" in result.stderr


def test_evaluate_takes_the_vae_bound_with_as_many_importance_samples_as_asked(
    genfleet: Cli,
) -> None:
    out, last = trained(genfleet, TINY_VAE_YAML, "vae")
    final_bound = evaluated(genfleet, out)
    assert final_bound["likelihood"].startswith("bound (IWAE")
    # The run's own test number used iw_samples_final, and so does evaluate by default.
    assert final_bound["test_bits_per_dim"] == pytest.approx(last["test_bits_per_dim"], rel=1e-9)
    one_sample = evaluated(genfleet, out, "--iw-samples", "1")
    # k = 1 is the ELBO, never tighter on average than the 8-sample bound.
    assert one_sample["test_nll_nats"] > final_bound["test_nll_nats"]
