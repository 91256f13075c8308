"""What `leak info` shows: a model file's card and, for ONNX, its inputs, outputs, opset, size and sha256.

Describing validates: an invalid card, or one that contradicts the graph or the weights, raises.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from leakhunter.card import OPERATING_POINTS, FrontendConfig, ModelCard, SegmentationConfig, preset_name, stopped_by
from leakhunter.files import not_a_model_file
from leakhunter.inference.loader import CHECKPOINT_SUFFIXES, ONNX_SUFFIXES
from leakhunter.inference.onnx_card import ModelLoadError, read_onnx
from leakhunter.mel import lowest_input_rate
from leakhunter.operating import HELD_OUT


def describe_model(path: str | Path) -> dict:
    """The card's fields (JSON-able, as in model_meta.json) plus "file": what the file itself is.

    "file" holds path, format ("onnx" | "checkpoint" | "card"), size_bytes, sha256; for ONNX also input
    ("waveform" | "mel"), precision, inputs, outputs, opset and producer; for a checkpoint parameters and
    contents (its top-level keys). Works on .onnx, .pth/.pt and card .json files; raises the same
    errors as load_runner (every one a ValueError naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(not_a_model_file(path))
    data = path.read_bytes()
    facts = {"path": str(path), "size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        model = read_onnx(path)
        card = model.card
        facts |= {"format": "onnx", "input": model.input, "precision": model.precision,
                  "inputs": model.tensor_shapes("inputs"), "outputs": model.tensor_shapes("outputs"),
                  "opset": model.opset,
                  "producer": model.facts.producer}
    elif suffix in CHECKPOINT_SUFFIXES:
        from leakhunter.checkpoint import card_of, load_checkpoint  # imports torch
        from leakhunter.models import load_model, parameter_count

        payload = load_checkpoint(path)
        card = card_of(payload, path)
        facts |= {"format": "checkpoint", "contents": sorted(payload),
                  "parameters": parameter_count(load_model(card, payload["model"], source=str(path)))}
    elif suffix == ".json":
        card = ModelCard.load(path)
        facts |= {"format": "card"}
    else:
        raise ModelLoadError(f"{path}: not a model file; expected .onnx, .pth or a card .json")
    return card.to_dict() | {"file": facts}


SHOWN_SETTINGS = ("epochs", "lr", "batch_size", "seed", "loss", "channels", "hidden", "augment", "level", "reference")


def card_rows(card: dict) -> list[tuple[str, str]]:
    """`leak info`'s rows for a person: every card field, with the three that are walls of numbers summarised
    (the normaliser's statistics, the training record, the operating points); `--json` prints them whole."""
    rows = []
    for key, value in card.items():
        if key == "training" and isinstance(value, dict):
            text = _training_text(value)
        elif key == "operating_points" and value:
            order = [name for name in OPERATING_POINTS if name in value] + sorted(set(value) - set(OPERATING_POINTS))
            cv = card["training"].get("cv") if isinstance(card.get("training"), dict) else None
            where = ("held-out files (each fold at the point the other folds chose)"
                     if isinstance(cv, dict) and cv.get("points_measured") == HELD_OUT else "calibration files")
            text = "\n".join(_point_text(name, value[name], where) for name in order)
        elif key == "frontend" and isinstance(value, dict) and isinstance(card.get("segmentation"), dict):
            text = _frontend_text(value, card["segmentation"])
        elif key == "normalisation" and isinstance(value, dict) and value.get("per_mel_bin"):
            text = f"per mel bin: {len(value.get('mean', []))} means and standard deviations (--json shows them)"
        else:
            text = value if isinstance(value, str) else json.dumps(value)
        rows.append((key, text))
    return rows


def _frontend_text(frontend: dict, segmentation: dict) -> str:
    """Which preset (a person knows `wide`, not its eleven numbers) and the slowest recordings it reads."""
    config = FrontendConfig(**frontend)
    name = preset_name(config, SegmentationConfig(**segmentation))
    return (f"{'preset ' + name if name else 'custom (no preset)'}; reads recordings of "
            f"{math.ceil(lowest_input_rate(config))} Hz and up\n{json.dumps(frontend)}")


def _point_text(name: str, point: dict, where: str) -> str:
    if point.get("threshold") is None:
        return f"{name}: unavailable ({point.get('reason', '')})"
    rates = [f"recall {point['recall']:.3f}" if point.get("recall") is not None else None,
             f"{point['false_alarms_per_100']:.1f} false alarms per 100"
             if point.get("false_alarms_per_100") is not None else None]
    return (f"{name}: threshold {point['threshold']:g} ({point.get('target', '')}); on {point.get('n_files')} "
            f"{where}: {', '.join(rate for rate in rates if rate) or 'no rate measured'}")


def _training_text(training: dict) -> str:
    """The training record in a few lines: a stop first, then the estimates, the data and the settings."""
    lines = []
    if training.get("stopped_by"):
        lines.append(f"STOPPED: {stopped_by(training)}")
    cv = training.get("cv")
    if cv:
        pooled, baseline = cv.get("pooled", {}), (cv.get("baseline") or {}).get("pooled", {})
        lines.append(f"{cv.get('k')}-fold cross-validation by group: held-out file F1 {_number(pooled.get('file_f1'))} "
                     f"(AUC {_number(pooled.get('file_auc'))}) on {pooled.get('n_files')} files; baseline "
                     f"{_number(baseline.get('file_f1'))}; chosen {cv.get('epochs')} epochs, threshold "
                     f"{cv.get('threshold')}")
    val, test = training.get("val_metrics") or {}, training.get("test_metrics") or {}
    if val or test:
        lines.append(f"epoch {training.get('best_epoch')}: validation file F1 {_number(val.get('file_f1'))}"
                     + (" (in-sample)" if cv else "")
                     + f"; test file F1 {_number(test.get('file_f1'))} on {test.get('n_files')} files")
    baseline = training.get("baseline")
    if isinstance(baseline, dict):
        lines.append(f"baseline ({baseline.get('model')}): validation file F1 "
                     f"{_number((baseline.get('val') or {}).get('file_f1'))}, test "
                     f"{_number((baseline.get('test') or {}).get('file_f1'))}")
    if training.get("data"):
        lines.append(f"data {training['data']} ({training.get('parameters', '?')} parameters)")
    config = training.get("config") or {}
    shown = [f"{key} {config[key]}" for key in SHOWN_SETTINGS if config.get(key) not in (None, "", "none")]
    if shown:
        lines.append("settings: " + ", ".join(shown) + " (--json shows every one)")
    return "\n".join(lines) or json.dumps(training)


def _number(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"
