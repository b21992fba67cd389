"""Keyword spotting: train on some synthesized voices, test on OTHER voices, speeds and pitches.

Data (``modelloop data keywords``, espeak-ng + sox, 16 kHz): 8 words (yes, no, up, down, left,
right, on, off). Training voices en-us, en+m7, en-us+f3 at speeds 140/175/210 and pitches 35/50/65
(27 clips per word), 15% of them held out for early stopping; test voices en-gb, en+f2, en-us+m3
at speeds 160/195 and pitches 42/58 (12 clips per word) — no voice, speed or pitch in common.
Every clip is decoded, VAD-trimmed and centred in 1 s as the loop does (``data.audio``); log-mels
(40 x 51) are fit on the training split.

Contenders: the two shipped candidates (``cnn`` width 16 and ``ds-cnn``) trained on the training
clips plus 3 augmented copies each (speed, shift, gain, noise), against the named baseline: the
same ``cnn`` trained on the original clips only (no augmentation). Latency: single-clip p50 of the
network itself (log-mels in) and of featurizer + network (waveform in), one thread, after warm-up.

Prints a markdown table. Run: .venv/bin/python bench/keywords.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from modelloop.data.audio import augment_waveforms, load_audio_folder
from modelloop.data.dataset import stratified_split
from modelloop.data.keywords import make_keywords
from modelloop.models import batched_logits, build_model, count_parameters
from modelloop.tasks.audio_features import LogMelFeaturizer
from modelloop.train.trainer import TrainConfig, Trainer

WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off"]


def p50_ms(fn, x, runs: int = 200, warmup: int = 20) -> float:
    from modelloop.evaluate.metrics import latency_ms

    with torch.inference_mode():
        return latency_ms(lambda _: fn(x), runs, warmup)["p50_ms"]


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        make_keywords(Path(tmp) / "train", WORDS, ["en-us", "en+m7", "en-us+f3"], [140, 175, 210], [35, 50, 65])
        make_keywords(Path(tmp) / "test", WORDS, ["en-gb", "en+f2", "en-us+m3"], [160, 195], [42, 58])
        gen_s = time.perf_counter() - t
        t = time.perf_counter()
        tr, te = load_audio_folder(Path(tmp) / "train"), load_audio_folder(Path(tmp) / "test")
        load_s = time.perf_counter() - t
    assert tr.class_names == te.class_names
    idx = stratified_split(tr.y, {"val": 0.15}, seed=0)
    x_tr, y_tr = torch.from_numpy(tr.x[idx["train"]]), torch.from_numpy(tr.y[idx["train"]])
    x_va, y_va = torch.from_numpy(tr.x[idx["val"]]), torch.from_numpy(tr.y[idx["val"]])
    x_te, y_te = torch.from_numpy(te.x), torch.from_numpy(te.y)
    print(f"clips: train {len(y_tr)}, val {len(y_va)}, test {len(y_te)} (other voices); generated in {gen_s:.1f} s, "
          f"decoded + VAD-trimmed in {load_s:.1f} s\n")

    x_aug = torch.cat([x_tr, augment_waveforms(x_tr, 3, seed=0)])
    y_aug = y_tr.repeat(4)
    rows = []
    for name, family, params, (xt, yt) in (
        ("cnn, no augmentation (baseline)", "cnn", {"width": 16}, (x_tr, y_tr)),
        ("cnn (width 16)", "cnn", {"width": 16}, (x_aug, y_aug)),
        ("ds-cnn", "ds-cnn", {}, (x_aug, y_aug)),
    ):
        feat = LogMelFeaturizer().fit(xt)
        ftr, fva, fte = feat.transform(xt), feat.transform(x_va), feat.transform(x_te)
        torch.manual_seed(0)
        model = build_model({"family": family, "input_shape": list(ftr.shape[1:]), "num_classes": len(WORDS),
                             "params": params})
        t = time.perf_counter()
        res = Trainer(TrainConfig(max_epochs=25, patience=6, batch_size=64, lr=3e-3, weight_decay=1e-4,
                                  seed=0)).fit(model, (ftr, yt), (fva, y_va))
        train_s = time.perf_counter() - t
        acc = float((batched_logits(model, fte).argmax(1) == y_te).float().mean())
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        model.eval()
        net = p50_ms(model, fte[:1])
        full = p50_ms(lambda w, m=model, f=feat: m(f.transform(w)), x_te[:1])
        torch.set_num_threads(threads)
        rows.append((name, len(yt), acc, net, full, count_parameters(model), res.best_epoch, train_s))
        print(f"{name}: test accuracy {acc:.4f}, p50 {net:.2f} ms", flush=True)

    base = rows[0]
    print("\n| model | training clips | test accuracy (other voices) | vs baseline | p50 ms, network | "
          "p50 ms, waveform in | parameters | best epoch | training s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, n, acc, net, full, params, epoch, secs in rows:
        print(f"| {name} | {n} | {acc:.4f} | {acc - base[2]:+.4f} | {net:.2f} | {full:.2f} | {params:,} | {epoch} | "
              f"{secs:.0f} |")


if __name__ == "__main__":
    main()
