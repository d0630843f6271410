"""The default motion model's card (Markdown), rendered from the held-out results of
:func:`training.landmarks.evaluate.evaluate` and the training facts.

:func:`figures_table` is also what the slow test recomputes from the shipped weights and compares, cell by cell,
with the shipped card (:func:`table_cells`).
"""

from __future__ import annotations

import re

__all__ = ["COLUMNS", "ROWS", "check_targets", "figures_table", "model_card", "table_cells"]

ROWS = (  # (label, key, format)
    ("pitch std (deg)", "std_pitch", "{:.2f}"), ("yaw std (deg)", "std_yaw", "{:.2f}"),
    ("roll std (deg)", "std_roll", "{:.2f}"),
    ("pitch mean speed (deg/s)", "speed_pitch", "{:.2f}"), ("yaw mean speed (deg/s)", "speed_yaw", "{:.2f}"),
    ("roll mean speed (deg/s)", "speed_roll", "{:.2f}"),
    ("pitch jitter (mean abs 2nd difference, deg/frame^2)", "jitter_pitch", "{:.3f}"),
    ("yaw jitter", "jitter_yaw", "{:.3f}"), ("roll jitter", "jitter_roll", "{:.3f}"),
    ("head speed vs loudness r (clips >= 4 s)", "head_energy_r", "{:.3f}"),
    ("seeds: r between the pitch/yaw of seeds 0 and 1 (1 = identical)", "seed_r", "{:.3f}"),
    ("blinks per minute", "blink_rate", "{:.1f}"), ("mean blink duration (s)", "blink_duration", "{:.3f}"),
    ("**lip r with the measured lip, lag 0 (mean over clips)**", "lip_r", "{:.3f}"),
    ("lip in silences > 200 ms: median normalised ratio", "sil_lip_median", "{:.3f}"),
    ("lip in silences: fraction closed (< 0.03)", "sil_closed", "{:.3f}"),
    ("lip in silences / lip in speech (per clip)", "sil_lip_rel", "{:.2f}"),
)
COLUMNS = (("real (measured)", "real"), ("**new default**", "model"),
           ("new default, pause closure off (seed 0)", "model_open_pauses"),
           ("today: lip model + sway + blinks", "today"),
           ("today as `speak` rendered it (closed in silences)", "today_gated"), ("loudness baseline", "loudness"))
RATIO_KEYS = tuple(f"{k}_{a}" for k in ("std", "speed", "jitter") for a in ("pitch", "yaw", "roll"))


def _cell(res: dict, col: str, key: str, fmt: str) -> str:
    v = res.get(col, {}).get(key)
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    cell = fmt.format(v)
    real = res.get("real", {}).get(key)
    if key in RATIO_KEYS and col != "real" and real:
        cell += f" ({v / real:.2f}x)"
    return cell


def figures_table(res: dict) -> str:
    """The figures table (Markdown) of a results dict."""
    cols = [(name, key) for name, key in COLUMNS if key in res]
    out = ["| figure | " + " | ".join(n for n, _ in cols) + " |", "|---|" + "---|" * len(cols)]
    for label, key, fmt in ROWS:
        out.append(f"| {label} | " + " | ".join(_cell(res, col, key, fmt) for _, col in cols) + " |")
    return "\n".join(out)


_NUM = re.compile(r"-?\d+(?:\.\d+)?")


def table_cells(markdown: str) -> dict[tuple[str, str], list[float]]:
    """``{(row label, column label): numbers in the cell}`` of the first figures table in ``markdown``."""
    lines = [ln for ln in markdown.splitlines() if ln.startswith("| ")]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| figure |"))
    header = [h.strip() for h in lines[start].strip("|").split("|")]
    out = {}
    for ln in lines[start + 1:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if cells[0] not in {r[0] for r in ROWS}:
            break
        for h, c in zip(header[1:], cells[1:]):
            out[(cells[0], h)] = [float(x) for x in _NUM.findall(c)]
    return out


def check_targets(res: dict) -> list[tuple[str, bool, str]]:
    """``(target, met, detail)`` for the issue's targets, computed from the results."""
    real, model = res["real"], res.get("model", {})
    out = []
    for kind, lo, hi in (("std", 0.5, 2.0), ("speed", 0.5, 2.0), ("jitter", 0.0, 1.0)):
        ratios = {a: model[f"{kind}_{a}"] / real[f"{kind}_{a}"] for a in ("pitch", "yaw", "roll")}
        ok = all(lo <= r <= hi for r in ratios.values())
        detail = ", ".join(f"{a} {r:.2f}x" for a, r in ratios.items())
        out.append((f"head {kind} {'<= 1x' if kind == 'jitter' else '0.5x-2x'} of real", ok, detail))
    out.append(("seeds differ (pitch/yaw r of seeds 0 and 1 < 0.9)", model["seed_r"] < 0.9, f"r {model['seed_r']:.3f}"))
    br = model["blink_rate"] / real["blink_rate"]
    bd = model["blink_duration"] / real["blink_duration"]
    out.append(("blinks: rate and duration 0.5x-2x of real", 0.5 <= br <= 2 and 0.5 <= bd <= 2,
                f"rate {br:.2f}x, duration {bd:.2f}x"))
    if "today" in res:
        out.append(("lip r >= today's lip-sync model (held-out, lag 0)", model["lip_r"] >= res["today"]["lip_r"],
                    f"{model['lip_r']:.3f} vs {res['today']['lip_r']:.3f}"))
    if "sil_closed" in model and "sil_closed" in real:
        out.append(("closes the mouth in silences like real speakers (closed fraction 0.5x-2x of real)",
                    0.5 <= model["sil_closed"] / max(real["sil_closed"], 1e-9) <= 2,
                    f"{model['sil_closed']:.3f} vs real {real['sil_closed']:.3f}"))
    return out


def _cpu_text(timing: dict) -> str:
    """The CPU time of the training run and what it means on an idle 2-core machine ('' when not recorded)."""
    if "cpu_seconds" not in timing:
        return ""
    cpu = float(timing["cpu_seconds"])
    return (f"CPU time (user + system, including the landmark worker processes): {cpu:.0f} s, so about "
            f"{cpu / 2 / 60:.1f} min of wall time on 2 otherwise idle cores (load average, 1/5/15 min, before: "
            f"{' / '.join(map(str, timing.get('load_before', [])))}, after: "
            f"{' / '.join(map(str, timing.get('load_after', [])))}). ")


def _closure_text(closure: dict, cv: dict) -> str:
    """The card's sentence on the pause closure and how it was chosen (see
    :func:`training.landmarks.fit.choose_lip_blend`)."""
    best = cv.get("chosen_oof", {})
    rules = cv.get("rules", [])
    return (f"`{closure}`. Chosen by nested speaker-disjoint cross-validation on the same clips ({cv.get('folds', '?')}"
            f" folds): each of {len(rules)} candidates (gate form x a closed fraction of 0.5x-1x the real one to fit "
            "its threshold to) was fitted without each fold's speakers and scored on them; chosen: the one costing "
            "the least lip r among those that close, out of fold, 0.5x-2x the real fraction of pause frames below "
            f"0.03 (out of fold: costs r {best.get('oof_cost', '?')}, closes {best.get('oof_closed', '?')} vs real "
            f"{best.get('oof_real_closed', '?')}, {best.get('oof_ratio', '?')}x), then refitted on all of them (closes "
            f"{cv.get('chosen_closed', '?')} of their pause frames vs real {cv.get('target_closed', '?')}; lip r "
            f"{cv.get('chosen_r', '?')} vs {cv.get('no_gate_r', '?')} without it). Fitting the threshold on the "
            "clips it is scored on (the previous rule) picked gates that close far less on new speakers.")


def model_card(res: dict, facts: dict, command: str) -> str:
    """The whole card. ``facts``: training facts (``params``, ``size_bytes``, ``blend``, ``closure``, ``cv``,
    ``offsets``, ``timing``, ``machine``, ``stream``, ``train_config``)."""
    s = res["split"]
    lines = [
        "# Default motion model card (`landmark_motion.safetensors`)", "",
        "What `audio2lp speak` and `audio2lp motion` use by default: a FaceFormer-style causal transformer "
        "(:mod:`audio2lp.models.landmark_motion`) from streaming Whisper features to per-frame motion (lip-open "
        "ratio, both eye-open multipliers, pitch/yaw/roll in degrees, head translation and scale), trained on "
        "motion measured from real talking videos with face landmarks. The lip is a blend of today's lip-sync "
        "model and the model's linear lip read-out, with a pause closure; the head is the transformer's mean plus "
        "a fitted AR(2) head process and a causal smoother; blinks come from a fitted renewal process. "
        f"{facts.get('params', '?')} parameters, {facts.get('size_bytes', 0) / 1e6:.2f} MB.", "",
        "## Data", "",
        f"The talking clips of the data folder ({s['train_clips'] + s['test_clips']} clips). Per 25 fps frame, "
        "from dlib's 68 landmarks (`training/landmarks/measure.py`): lip and eye open ratios, head pose by PnP "
        "of a generic 3-D face on rigid points (LivePortrait's Euler convention), head centre and size; head "
        "channels smoothed at their noise floor, everything normalised per clip (no identity leaks). The training "
        "clips' motion is shifted by the audio offset the lip-sync trainer's estimator finds "
        f"({len(facts.get('offsets', {}))} clips shifted: "
        + (", ".join(f"{k} {v:+d}" for k, v in sorted(facts.get("offsets", {}).items())) or "none") + ").", "",
        "## Split by speaker", "",
        f"Training: {s['train_clips']} clips, {s['train_speakers']} speakers, {s['train_seconds']} s. Held out: "
        f"{s['test_clips']} clips, {s['test_speakers']} speakers, {s['test_seconds']} s. Speakers come from "
        "`SPEAKERS.tsv` (and the clip names for clips it does not list). Held out: every speaker today's lip-sync "
        "model held out (so it never saw a held-out speaker), plus the speakers `SPEAKERS.tsv` adds at positions 0 "
        "mod 4 of their sorted ids; a fixed rule decided before any result. Held-out speakers: "
        + ", ".join(s.get("test_speaker_ids", [])) + ".", "",
        "## Lip blend and pause closure (chosen on the training speakers only)", "",
    ]
    cv = facts.get("cv", {})
    lines += [
        f"Lip = {facts.get('blend', 0):.2f} x the lip-sync model + {1 - facts.get('blend', 0):.2f} x the read-out. "
        f"Chosen by {cv.get('folds', '?')}-fold speaker-disjoint cross-validation: the read-out was refitted "
        "without each fold's speakers, and the weight scored on the training clips the lip-sync model never saw "
        f"({cv.get('clips', '?')} clips, {cv.get('speakers', '?')} speakers; mean r by weight: "
        + ", ".join(f"{k}: {v}" for k, v in list(cv.get("r_by_weight", {}).items())[::4]) + ").",
        "",
        "Pause closure: " + (_closure_text(facts["closure"], cv) if facts.get("closure") else "none."), "",
        "## Figures on the held-out speakers", "",
        f"Every stochastic column is the mean over seeds {', '.join(map(str, res.get('seeds', [])))}; in brackets the "
        "value as a multiple of the real one (targets: 0.5x-2x for std and speed, at most 1x for jitter). Head "
        "figures per clip on valid frames, weighted by frames; correlations are means over clips. Definitions: "
        "`training/landmarks/metrics.py`.", "",
        figures_table(res), "",
        "## Targets", "",
    ]
    for name, ok, detail in check_targets(res):
        lines.append(f"- {'met' if ok else '**not met**'}: {name} ({detail})")
    timing = facts.get("timing", {})
    lines += [
        "", "## Reproduce", "",
        "```bash", command, "```", "",
        f"Wall time of that run: {timing.get('total_seconds', '?')} s (landmarks and features "
        f"{timing.get('data_seconds', '?')} s, fits and training {timing.get('train_seconds', '?')} s, "
        f"held-out evaluation {timing.get('eval_seconds', '?')} s; cache "
        f"{'empty' if timing.get('empty_cache') else 'warm'} at the start) on {facts.get('machine', '?')}; "
        f"the machine was shared with other jobs. {_cpu_text(timing)}`tests/training/landmarks/test_card.py` (slow, "
        "realdata) recomputes this table from the shipped weights and the data folder.", "",
    ]
    return "\n".join(lines)


RESULTS_BEGIN = "<!-- default-motion-quality:begin -->"
RESULTS_END = "<!-- default-motion-quality:end -->"


def results_section(res: dict, command: str) -> str:
    """The quality section of ``benchmarks/RESULTS.md`` (between :data:`RESULTS_BEGIN` / :data:`RESULTS_END`)."""
    s, t = res["split"], res.get("timing", {})
    return "\n".join([
        RESULTS_BEGIN, "## Default motion (speech -> lips, eyes, head): quality on held-out speakers", "",
        f"Command: `{command}` ({t.get('total_seconds', '?')} s wall on 2 shared CPU cores, cache "
        f"{'empty' if t.get('empty_cache') else 'warm'}; card: `audio2lp/assets/LANDMARK_MOTION_MODEL_CARD.md`). "
        + _cpu_text(t) +
        f"Held out: {s['test_clips']} clips / {s['test_speakers']} speakers / {s['test_seconds']} s; trained on "
        f"{s['train_clips']} clips / {s['train_speakers']} speakers. Stochastic columns: mean over seeds "
        f"{', '.join(map(str, res.get('seeds', [])))}.", "",
        figures_table(res), "",
        *[f"- {'met' if ok else '**not met**'}: {name} ({detail})" for name, ok, detail in check_targets(res)],
        RESULTS_END, ""])


def update_results(path, section: str):
    """Replace the section between the markers of ``path`` (or append it); the rest of the file stays."""
    from pathlib import Path

    from training.common import write_text_atomic

    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmark results\n\n"
    if RESULTS_BEGIN in text and RESULTS_END in text:
        text = text[:text.index(RESULTS_BEGIN)] + section.rstrip("\n") + text[text.index(RESULTS_END)
                                                                                + len(RESULTS_END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    return write_text_atomic(path, text)
