"""`leak train --mode fusion` end to end on a small gain-confound corpus: the stages, what they transfer and
freeze, rerunning a stopped run, and the predecessor's incident (background/incident-fusion-restores-epoch-1.md)
reproduced cause by cause, each caught by its check."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import Interrupt, quick_config

from leakhunter.checkpoint import card_of, load_checkpoint
from leakhunter.errors import InputError
from leakhunter.training.fusion import FusionInputs, FusionRun, Stage, train_fusion
from leakhunter.training.health import HealthFailure
from leakhunter.training.trainer import Trainer

FUSION = {"mode": "fusion", "branches": "mel,features,meta", "meta": "gain_db", "epochs": 3,
          "channels": "4,8,8", "hidden": 16}
QUIET = lambda text: None  # noqa: E731


@pytest.fixture(scope="module")
def confound_dataset(tmp_path_factory):
    from leakhunter.synth import synth_corpus
    from leakhunter.training.dataset import build_dataset

    root = tmp_path_factory.mktemp("confound")
    corpus = synth_corpus(root / "corpus", files_per_class=16, duration_s=2.0, scenario="gain-confound", seed=3)
    return build_dataset(corpus.manifest, root / "data.h5", val=0.25, test=0.25, seed=0).output


@pytest.fixture(scope="module")
def fusion_run(confound_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("fusion") / "run"
    return train_fusion(quick_config(confound_dataset, out, **FUSION), log=QUIET)


def stage_summary(run_dir, name):
    return json.loads((run_dir / "stages" / name / "stage.json").read_text())["summary"]


def test_a_fusion_run_trains_every_stage_and_keeps_the_best_fused_one(fusion_run):
    run = fusion_run.run_dir
    names = ["0-mel", "0-features", "0-meta", "1-fusion", "2-finetune"]
    assert sorted(p.name for p in (run / "stages").iterdir()) == sorted(names)
    card = card_of(load_checkpoint(run / "best.pth"), "best.pth")
    assert card.mode == "fusion" and card.architecture["name"] == "fusion"
    assert card.branches["names"] == ["mel", "features", "meta"]
    assert card.branches["meta"]["fields"] == ["gain_db"] and card.branches["meta"]["columns"] == ["gain_db"]
    assert card.branches["features"]["version"] == 2 and len(card.branches["features"]["mean"]) == 14
    assert [s["stage"] for s in card.branches["stages"]] == names
    assert card.branches["selected_stage"] in ("1-fusion", "2-finetune")
    weights = card.branches["weights"]
    assert len(weights) == 3 and sum(weights) == pytest.approx(1, abs=1e-3)
    assert weights != pytest.approx([1 / 3] * 3, abs=1e-4)  # learned, not the prior
    assert json.loads((run / "model_meta.json").read_text())["branches"]["weights"] == weights
    assert (run / "health.json").is_file()


def test_stage_one_loads_the_stage_zero_encoders_without_heads_and_freezes_them(fusion_run):
    run = fusion_run.run_dir
    fused = stage_summary(run, "1-fusion")
    informative = [b for b in ("mel", "features", "meta") if stage_summary(run, f"0-{b}")["kappa"] > 0.05]
    assert informative, "no branch learned anything alone on the confound corpus"
    stage1 = load_checkpoint(run / "stages" / "1-fusion" / "best.pth")["model"]
    for branch in informative:
        alone = load_checkpoint(run / "stages" / f"0-{branch}" / "best.pth")["model"]
        encoder = [k for k in alone if k.startswith(f"{branch}.") and not k.startswith(f"{branch}.head.")]
        assert set(encoder) <= set(fused["transferred"])
        assert all(torch.equal(alone[k], stage1[k]) for k in encoder)  # frozen: unchanged after training
        assert not torch.equal(alone[f"{branch}.head.weight"], stage1[f"{branch}.head.weight"])  # heads train
    assert not any(".head." in name for name in fused["transferred"])
    assert fused["trainable_parameters"] < fused["parameters"]
    tuned = stage_summary(run, "2-finetune")
    assert tuned["trainable_parameters"] == tuned["parameters"]  # stage 2: everything unfrozen


def test_a_branch_that_learned_nothing_alone_is_trained_from_scratch_not_frozen(confound_dataset, tmp_path):
    """RC1: a branch collapsed in pre-training (kappa 0) was transferred and frozen into the fusion. On this
    corpus the meta branch alone (the recorder gain) carries no label, so it must be H014's case."""
    result = train_fusion(quick_config(confound_dataset, tmp_path / "run", **(FUSION | {"branches": "features,meta"})),
                          log=QUIET)
    meta_alone = stage_summary(result.run_dir, "0-meta")
    assert meta_alone["kappa"] <= 0.05
    h014 = [f for f in result.health if f.code == "H014"]
    assert h014 and "meta" in h014[0].message and "trained from scratch" in h014[0].message
    fused = stage_summary(result.run_dir, "1-fusion")
    assert not any(name.startswith("meta.") for name in fused["transferred"])
    alone = load_checkpoint(result.run_dir / "stages" / "0-meta" / "best.pth")["model"]
    stage1 = load_checkpoint(result.run_dir / "stages" / "1-fusion" / "best.pth")["model"]
    assert not torch.equal(alone["meta.encoder.0.weight"], stage1["meta.encoder.0.weight"])


def test_fusion_weights_that_cannot_learn_stop_the_run(confound_dataset, tmp_path, monkeypatch):
    """RC5: fixed 0.7/0.3 fusion weights. Weights frozen (or left out of the optimizer) are H013's failure."""
    original = Stage.prepare_model

    def freeze_weights(self, net, data, log):
        original(self, net, data, log)
        net.fusion_logits.requires_grad_(False)

    monkeypatch.setattr(Stage, "prepare_model", freeze_weights)
    with pytest.raises(HealthFailure, match="H013 fusion weights .*frozen"):
        train_fusion(quick_config(confound_dataset, tmp_path / "run", **(FUSION | {"branches": "mel,features", "meta": "",
                                                                              "fusion_prior": "0.7,0.3"})), log=QUIET)


def test_a_stage_whose_learning_rate_is_too_low_to_move_the_weights_warns(confound_dataset, tmp_path):
    """RC4: stage 2 at LR 1e-6 never moved. H010 measures the trainable weights' change."""
    result = train_fusion(quick_config(confound_dataset, tmp_path / "run", **(FUSION | {"branches": "mel,features", "meta": "",
                                                                                   "lr": 1e-9, "epochs": 2})), log=QUIET)
    codes = {f.code for f in result.health}
    assert "H010" in codes
    assert any(f.code == "H013" and "never moved" in f.message for f in result.health)


def test_a_frozen_stage_one_is_not_flagged_for_its_few_trainable_parameters(fusion_run):
    """RC3 was ~195 trainable parameters in a frozen stage by accident; H006 judges a stage that freezes its
    encoders on purpose by whether anything trains at all, so a healthy stage 1 raises nothing."""
    lines = json.loads((fusion_run.run_dir / "health.json").read_text())["findings"]
    assert not [f for f in lines if f["code"] == "H006"]


def test_rerunning_finishes_an_interrupted_run_exactly_as_an_uninterrupted_one(confound_dataset, fusion_run,
                                                                              tmp_path, monkeypatch):
    config = quick_config(confound_dataset, tmp_path / "run", **FUSION)
    original = Trainer._write_epoch

    def stop_in_stage_one(self, epoch, row, improved):  # a kill after stage 1's second epoch was written
        original(self, epoch, row, improved)
        if self.stage is not None and self.stage.number == 1 and epoch == 2:
            raise Interrupt

    monkeypatch.setattr(Trainer, "_write_epoch", stop_in_stage_one)
    with pytest.raises(Interrupt):
        train_fusion(config, log=QUIET)
    monkeypatch.undo()
    assert (tmp_path / "run" / "stages" / "0-meta" / "stage.json").is_file()
    assert not (tmp_path / "run" / "stages" / "1-fusion" / "stage.json").is_file()
    lines = []
    monkeypatch.chdir(Path(confound_dataset).parent)  # from another folder, the data spelt another way
    result = train_fusion(replace(config, data=Path(confound_dataset).name), log=lines.append)
    assert any("stage 0-mel: done before" in line for line in lines)
    resumed = load_checkpoint(result.run_dir / "best.pth")["model"]
    whole = load_checkpoint(fusion_run.run_dir / "best.pth")["model"]
    assert resumed.keys() == whole.keys() and all(torch.equal(resumed[k], whole[k]) for k in whole)
    assert [(f.code, f.when) for f in result.health] == [(f.code, f.when) for f in fusion_run.health]


def test_fusion_refuses_what_it_cannot_learn_from(confound_dataset, tmp_path):
    with pytest.raises(InputError, match="'sensor_id' is refused"):
        FusionRun(quick_config(confound_dataset, tmp_path / "run", **(FUSION | {"meta": "sensor_id"})), log=QUIET)
    config = replace(quick_config(confound_dataset, tmp_path / "run", **FUSION), meta="pipe")
    with pytest.raises(InputError, match="'pipe' has no value in any training file"):
        FusionRun(config, log=QUIET)


def test_doctor_recomputes_a_fusion_runs_findings(fusion_run):
    from leakhunter.training.doctor import doctor

    live = json.loads((fusion_run.run_dir / "health.json").read_text())["findings"]
    again = doctor(fusion_run.run_dir)
    assert {(f.code, f.level) for f in again.findings} == {(f["code"], f["level"]) for f in live}
    assert any(f.code == "H014" for f in again.findings) == any(f["code"] == "H014" for f in live)


def test_leak_eval_reports_each_branch_alone_beside_the_fused_model(fusion_run, confound_dataset):
    from leakhunter.training.evaluate import evaluate

    report = evaluate(fusion_run.run_dir / "best.pth", confound_dataset, "test")
    assert [row["branch"] for row in report["branches"]] == ["mel", "features", "meta"]
    assert sum(row["weight"] for row in report["branches"]) == pytest.approx(1, abs=1e-3)
    assert report["branches"][2]["file_auc"] == pytest.approx(0.5, abs=0.2)  # the gain alone says nothing
    assert report["mode"] == "fusion" and 0 <= report["file_f1"] <= 1


def test_a_meta_field_that_copies_the_label_warns_as_leakage(confound_dataset, tmp_path):
    """A manifest column filled in after the fact (who found the leak) predicts the label perfectly: H004 warns."""
    import csv

    from leakhunter.training.dataset import build_dataset
    from leakhunter.training.fusion import FusionInputs

    with open(confound_dataset.parent / "corpus" / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    manifest = confound_dataset.parent / "corpus" / "manifest_crew.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*rows[0], "crew"])
        writer.writeheader()
        writer.writerows([row | {"crew": "repair" if row["label"] == "LEAK" else "survey"} for row in rows])
    data = build_dataset(manifest, tmp_path / "crew.h5", val=0.25, test=0.25, seed=0).output
    leaky = FusionInputs.fit(quick_config(data, tmp_path / "run", **(FUSION | {"meta": "gain_db,crew"})))
    assert [f.code for f in leaky.leakage] == ["H004"] and "'crew'" in leaky.leakage[0].message
    assert leaky.leakage[0].level == "warn"
    honest = FusionInputs.fit(quick_config(data, tmp_path / "run", **FUSION))
    assert honest.leakage == ()


@pytest.fixture(scope="module")
def fusion_onnx(fusion_run):
    from leakhunter.export import export_model

    return export_model(fusion_run.run_dir / "best.pth")


def test_a_fusion_model_exports_with_its_features_in_the_graph_and_a_meta_input(fusion_onnx):
    """Parity over meta as trained, missing and shifted: each golden recording three times."""
    import onnx

    report = fusion_onnx
    assert report.passed and report.parity[0].max_abs_leak_prob <= 1e-4 and not report.parity[0].verdict_flips
    names = [f.name for f in report.parity[0].files]
    assert {name.rsplit("/", 1)[1] for name in names} == {"meta-usual", "meta-missing", "meta-shifted"}
    graph = onnx.load(report.output).graph
    assert [value.name for value in graph.input] == ["waveform", "meta"]


def test_fusion_export_refuses_what_it_cannot_keep(fusion_run, tmp_path):
    from leakhunter.export import export_model

    with pytest.raises(InputError, match="fp32 waveform graph only"):
        export_model(fusion_run.run_dir / "best.pth", tmp_path / "x.onnx", fp16=True)
    with pytest.raises(InputError, match="--input mel"):
        export_model(fusion_run.run_dir / "best.pth", tmp_path / "x.onnx", input="mel")


def test_predict_scores_a_fusion_model_with_meta_from_sidecar_manifest_or_name(fusion_run, fusion_onnx,
                                                                               confound_dataset, tmp_path):
    import csv
    import shutil

    from leakhunter.inference.predict import predict

    corpus = confound_dataset.parent / "corpus"
    files = sorted((corpus / "LEAK").glob("*.wav"))[:3] + sorted((corpus / "NORMAL").glob("*.wav"))[:3]
    by_onnx = predict(files, fusion_onnx.output, workers=0).rows
    by_torch = predict(files, fusion_run.run_dir / "best.pth", workers=0).rows
    assert [r["verdict"] for r in by_onnx] == [r["verdict"] for r in by_torch]
    assert max(abs(a["mean_leak_prob"] - b["mean_leak_prob"]) for a, b in zip(by_onnx, by_torch)) <= 1e-4
    assert {(r["meta_source"], r["meta_missing"]) for r in by_onnx} == {("name", "")}
    # a sidecar wins over the name: the same audio at another recorder gain is another verdict's evidence
    sidecar = tmp_path / "meta.csv"
    with open(sidecar, "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "gain_db"), *((str(f), "12") for f in files)])
    shifted = predict(files, fusion_onnx.output, workers=0, meta=sidecar).rows
    assert {r["meta_source"] for r in shifted} == {"sidecar"}
    assert any(abs(a["mean_leak_prob"] - b["mean_leak_prob"]) > 1e-3 for a, b in zip(by_onnx, shifted))
    # no meta anywhere: scored and flagged, or refused with --meta-missing fail
    plain = tmp_path / "plain.wav"
    shutil.copy(files[0], plain)
    unknown = predict([plain], fusion_onnx.output, workers=0).rows[0]
    assert unknown["status"] == "ok" and (unknown["meta_source"], unknown["meta_missing"]) == ("none", "gain_db")
    refused = predict([plain], fusion_onnx.output, workers=0, meta_missing="fail")
    assert refused.rows[0]["status"] == "meta_missing" and "gain_db" in refused.rows[0]["message"]
    assert refused.exit_code == 2


def test_a_batch_row_holds_one_recording_when_the_model_takes_meta(fusion_onnx, confound_dataset):
    """Rows are packed across files for speed; a meta input is per row, so a fusion row holds one file, and
    scoring many short files together gives each its own meta (the same as scoring each alone)."""
    from leakhunter.inference.predict import predict

    files = sorted((confound_dataset.parent / "corpus" / "LEAK").glob("*.wav"))[:5]
    together = predict(files, fusion_onnx.output, workers=0, batch_rows=4).rows
    alone = [predict([f], fusion_onnx.output, workers=0).rows[0] for f in files]
    assert [r["mean_leak_prob"] for r in together] == pytest.approx([r["mean_leak_prob"] for r in alone], abs=1e-6)


def test_class_weights_far_apart_are_capped_in_stage_zero(confound_dataset, tmp_path):
    """RC2: 7x class weights drove a pre-training branch to predict one class. A stage-0 branch gets the capped
    weights every run gets (class_weight_cap, 3x by default; 2x here, below this split's ratio), and H005 says so."""
    import csv

    from leakhunter.training.dataset import build_dataset

    with open(confound_dataset.parent / "corpus" / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    leaks = [row for row in rows if row["label"] == "LEAK"]
    kept = [row for row in rows if row["label"] != "LEAK"] + leaks[::3][:5]  # 5 LEAK files to 16 NORMAL
    manifest = confound_dataset.parent / "corpus" / "manifest_rare.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    data = build_dataset(manifest, tmp_path / "rare.h5", val=0.3, test=0.2, seed=0).output
    config = quick_config(data, tmp_path / "stage", **FUSION, class_weight_cap=2.0)
    trainer = Trainer(config, log=QUIET, stage=Stage("0-features", 0, ("features",), FusionInputs.fit(config)))
    weights = trainer.criterion.weights
    assert float(weights.max() / weights.min()) == pytest.approx(2.0)  # the training split's LEAK share, capped
    assert any(f.code == "H005" and "capped at 2x" in f.message for f in trainer.health.findings)


def test_a_batch_larger_than_the_training_split_warns_in_every_stage(confound_dataset, tmp_path):
    """RC6: a batch larger than the split (one short batch an epoch). H011 warns, in the fused stages' record."""
    result = train_fusion(quick_config(confound_dataset, tmp_path / "run", **(FUSION | {
        "branches": "mel,features", "meta": "", "batch_size": 1_000_000, "epochs": 1})), log=QUIET)
    assert any(f.code == "H011" and "exceeds" in f.message and "stage 1-fusion" in f.when for f in result.health)


def test_leak_eval_of_the_exported_model_agrees_with_the_checkpoint(fusion_run, fusion_onnx, confound_dataset):
    """The .onnx scores the split's recordings through the engine (meta from the dataset's manifest columns, as
    in training); the .pth scores the stored features: the same verdicts."""
    from leakhunter.training.evaluate import evaluate

    exported = evaluate(fusion_onnx.output, confound_dataset, "test", workers=0)
    checkpoint = evaluate(fusion_run.run_dir / "best.pth", confound_dataset, "test")
    assert [f["verdict"] for f in exported["files"]] == [f["verdict"] for f in checkpoint["files"]]
    assert exported["file_f1"] == checkpoint["file_f1"]
    assert max(abs(a["mean_leak_prob"] - b["mean_leak_prob"])
               for a, b in zip(exported["files"], checkpoint["files"])) < 1e-3


def test_doctor_keeps_what_only_the_live_fusion_run_saw(fusion_run, tmp_path):
    """A meta leakage warning (H004, from the training files' meta at the start) is in the run's health.json only."""
    import shutil

    from leakhunter.training.doctor import doctor

    run = tmp_path / "run"
    shutil.copytree(fusion_run.run_dir, run)
    health = json.loads((run / "health.json").read_text())
    health["findings"].append({"code": "H004", "level": "warn", "when": "setup", "message": "meta field 'crew' ..."})
    (run / "health.json").write_text(json.dumps(health))
    assert any(f.code == "H004" and "'crew'" in f.message for f in doctor(run).findings)


def test_a_rebuilt_dataset_or_retrained_source_stage_trains_a_stage_again(confound_dataset, tmp_path):
    """A finished stage is skipped only when its settings, data and source checkpoints are the same."""
    run = FusionRun(quick_config(confound_dataset, tmp_path / "run", **FUSION), log=QUIET)
    stage = Stage("0-mel", 0, ("mel",), run.inputs)
    key = run._key(stage)
    run.inputs = replace(run.inputs, fingerprint="rebuilt")
    assert run._key(stage) != key


def test_fusion_refuses_torchrun(confound_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InputError, match="start it without torchrun"):
        FusionRun(quick_config(confound_dataset, tmp_path / "run", **FUSION), log=QUIET)


def test_resume_scores_again_what_a_sidecar_now_fills(fusion_onnx, confound_dataset, tmp_path):
    import csv
    import shutil

    from leakhunter.inference.predict import predict

    plain = tmp_path / "plain.wav"
    shutil.copy(sorted((confound_dataset.parent / "corpus" / "LEAK").glob("*.wav"))[0], plain)
    out = tmp_path / "scores.csv"
    first = predict([plain], fusion_onnx.output, out=out, workers=0, meta_missing="fail")
    assert first.rows[0]["status"] == "meta_missing"
    sidecar = tmp_path / "meta.csv"
    with open(sidecar, "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "gain_db"), (str(plain), "3")])
    again = predict([plain], fusion_onnx.output, out=out, workers=0, meta_missing="fail", meta=sidecar, resume=True)
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert again.skipped == 0 and [(r["status"], r["meta_source"]) for r in rows] == [("ok", "sidecar")]


def test_resume_of_a_fusion_stage_checkpoint_says_to_rerun_the_command(fusion_run):
    from typer.testing import CliRunner

    from leakhunter.cli import app

    last = fusion_run.run_dir / "stages" / "1-fusion" / "checkpoints" / "last.pth"
    result = CliRunner().invoke(app, ["train", "--resume", str(last)])
    assert result.exit_code == 2 and "rerun the same `leak train --mode fusion` command" in " ".join(result.output.split())


def test_serve_takes_an_uploads_meta_from_its_query_and_a_jobs_from_its_manifest(fusion_onnx, confound_dataset,
                                                                                tmp_path):
    import csv
    import json
    import shutil
    import time

    import httpx
    from test_serve import running, wait_job

    from leakhunter.inference.predict import predict
    from leakhunter.inference.serve import ServeSettings

    root = tmp_path / "data"
    root.mkdir()
    plain = root / "plain.wav"  # no meta in its name
    shutil.copy(sorted((confound_dataset.parent / "corpus" / "LEAK").glob("*.wav"))[0], plain)
    sidecar = tmp_path / "meta.csv"
    sidecar.write_text(f"path,gain_db\n{plain},12\n")
    expected = predict([plain], fusion_onnx.output, workers=0, meta=sidecar).rows[0]
    unknown = predict([plain], fusion_onnx.output, workers=0).rows[0]

    def score(**params):
        return httpx.post(f"{url}/v1/score", params={"name": "plain.wav", **params}, content=plain.read_bytes(),
                          headers={"Content-Type": "audio/wav"}, timeout=60)

    with running(model=fusion_onnx.output, workers=0, data_root=root, meta_missing="fail") as (url, service):
        refused, given = score().json(), score(gain_db="12").json()  # a fail server starts: its warm-up has meta
        assert refused["status"] == "meta_missing" and refused["verdict"] is None and "gain_db" in refused["message"]
        assert given["status"] == "ok" and given["meta_source"] == "request" and given["meta_missing"] is None
        assert abs(given["mean_leak_prob"] - expected["mean_leak_prob"]) <= 1e-6  # as the sidecar gives it
        assert abs(given["mean_leak_prob"] - unknown["mean_leak_prob"]) > 1e-5  # the value is used
        for bad, says in (([("gain", "12")], "gain: not one of the model's fields"),
                          ([("gain_db", "1"), ("gain_db", "2")], "gain_db: given more than once"),
                          ([("gain_db", " ")], "gain_db: empty")):
            refused = httpx.post(f"{url}/v1/score", params=[("name", "plain.wav"), *bad], content=plain.read_bytes(),
                                 headers={"Content-Type": "audio/wav"}, timeout=60)
            assert refused.status_code == 422 and says in refused.json()["detail"], refused.text
            assert "(the model's fields: gain_db; and `name`)" in refused.json()["detail"]
        deadline = time.monotonic() + 10  # the row is answered before the batch's meta is forgotten
        while service.engine.fields.request and time.monotonic() < deadline:
            time.sleep(0.05)
        assert service.engine.fields.request == {}  # an upload's meta is forgotten once its batch is scored
        with open(root / "night.csv", "w", newline="") as handle:
            csv.writer(handle).writerows([("path", "label", "gain_db"), ("plain.wav", "LEAK", "12")])
        job = httpx.post(f"{url}/v1/jobs", content=json.dumps({"inputs": ["night.csv"], "out": "out.csv"}),
                         timeout=10).json()
        assert wait_job(url, job["id"])["state"] == "done"
        row = httpx.get(f"{url}/v1/jobs/{job['id']}/rows").json()["rows"][0]
        assert row["meta_source"] == "manifest" and abs(row["mean_leak_prob"] - expected["mean_leak_prob"]) <= 1e-6
        assert service.engine.fields.manifest == {}
    with pytest.raises(InputError, match="--meta-missing must be one of score, fail"):
        ServeSettings(model=fusion_onnx.output, meta_missing="skip")


def test_a_fusion_run_never_replaces_a_finished_run(confound_dataset, fusion_run, tmp_path, monkeypatch):
    """A fusion run into a folder holding a finished run (binary, --cv, another fusion run; without --out the
    last fusion run's runs/fusion) replaced its best.pth and card silently. Refused now; an interrupted fusion
    run still continues (test_rerunning_finishes_an_interrupted_run_...)."""
    finished = fusion_run.run_dir
    before = (finished / "best.pth").read_bytes()
    with pytest.raises(FileExistsError, match=f"{finished} already holds a finished fusion run; choose another"):
        FusionRun(quick_config(confound_dataset, finished, **FUSION), log=QUIET)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "best.pth").write_bytes(before)  # a binary run's folder, as far as this check goes
    with pytest.raises(FileExistsError, match=f"{plain} already holds a finished run; choose another --out"):
        FusionRun(quick_config(confound_dataset, plain, **FUSION), log=QUIET)
    assert (finished / "best.pth").read_bytes() == before
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "fusion").mkdir(parents=True)
    (tmp_path / "runs" / "fusion" / "best.pth").write_bytes(before)
    with pytest.raises(FileExistsError, match="runs/fusion already holds a finished fusion run|runs/fusion already "
                                              "holds a finished run"):
        FusionRun(replace(quick_config(confound_dataset, tmp_path / "x", **FUSION), out=None), log=QUIET)
