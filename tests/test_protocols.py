"""eval.protocol presets (fian/config.py EVAL_PROTOCOLS): each against a plain re-computation of the
released evaluator it names, written here from that evaluator's source (issue 20 item 2):

- TALL, jiyanggao/TALL main.py ``compute_IoU_recall_top_n_forreg`` / ``nms_temporal``: for each
  level m, NMS at m - 0.05 (a moment is kept when its IoU with the kept one is <= the threshold),
  then a hit is ``iou >= m`` among the top n.
- 2D-TAN, microsoft/2D-TAN lib/core/eval.py ``eval`` / ``nms``: one list, NMS at
  ``TEST.NMS_THRESH`` = 0.5 (kept when ``ovr <= thresh``), a hit is ``overlap > t`` among the top r.
- CMIN, ikuinen/CMIN_moment_retrieval runners/runner_final.py ``eval``: the single best box, a hit
  is ``IoUs >= m``; mIoU = mean IoU of that box.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from fian.config import EVAL_PROTOCOLS, ConfigError, config_from_dict, load_config
from fian.evaluate import protocol_info, score_ranked

PARAMS = Path(__file__).resolve().parents[1] / "params"
FILES = [PARAMS / "base.yaml", PARAMS / "datasets" / "tacos.yaml", PARAMS / "variants" / "fian.yaml"]
NS, MS = (1, 5), (0.1, 0.3, 0.5, 0.7)


def iou(a, b) -> float:
    inter = min(a[1], b[1]) - max(a[0], b[0])
    union = max(a[1], b[1]) - min(a[0], b[0])
    return max(inter, 0.0) / union


def greedy_nms(segs, scores, overlap) -> list[int]:
    """Visit by descending score; keep unless IoU with a kept one is > overlap (the released ones
    keep ``<= overlap``).  Scores here are distinct, so tie order never matters."""
    kept: list[int] = []
    for i in sorted(range(len(segs)), key=lambda j: -scores[j]):
        if all(iou(segs[i], segs[k]) <= overlap for k in kept):
            kept.append(i)
    return kept


def tall(segs, scores, gt) -> dict[str, float]:
    out = {}
    for m in MS:
        # TALL writes iou_thresh - 0.05 in floats (0.7 - 0.05 = 0.6499999999999999); the preset takes
        # the decimal m - 0.05 (docs/ARCHITECTURE.md): the two part only on an IoU of exactly 0.65
        picks = [greedy_nms(s, c, round(m - 0.05, 10)) for s, c in zip(segs, scores, strict=True)]
        for n in NS:
            hits = [any(iou(s[i], g) >= m for i in p[:n]) for s, p, g in zip(segs, picks, gt, strict=True)]
            out[f"R@{n},IoU={m:g}"] = float(np.mean(hits))
    out["mIoU"] = float(np.mean([iou(s[int(np.argmax(c))], g) for s, c, g in zip(segs, scores, gt, strict=True)]))
    return out


def tdtan(segs, scores, gt) -> dict[str, float]:
    picks = [greedy_nms(s, c, 0.5)[: max(NS)] for s, c in zip(segs, scores, strict=True)]
    out = {}
    for m in MS:
        for n in NS:
            hits = [any(iou(s[i], g) > m for i in p[:n]) for s, p, g in zip(segs, picks, gt, strict=True)]
            out[f"R@{n},IoU={m:g}"] = float(np.mean(hits))
    out["mIoU"] = float(np.mean([iou(s[p[0]], g) for s, p, g in zip(segs, picks, gt, strict=True)]))
    return out


def cmin(segs, scores, gt) -> dict[str, float]:
    best = [iou(s[int(np.argmax(c))], g) for s, c, g in zip(segs, scores, gt, strict=True)]
    out = {f"R@1,IoU={m:g}": float(np.mean([b >= m for b in best])) for m in MS}
    out["mIoU"] = float(np.mean(best))
    return out


@pytest.fixture(scope="module")
def case():
    """300 queries, 12 scored moments each on an integer grid of 20 s: exact IoU ties (0.5 = 5/10,
    0.3, 0.7, NMS at 0.25 / 0.45 / 0.5) happen often, so hit rule and NMS both matter."""
    rng = np.random.default_rng(7)
    Q, K = 300, 12
    starts = rng.integers(0, 19, (Q, K))
    ends = starts + rng.integers(1, 11, (Q, K))
    segs = np.stack([starts, np.minimum(ends, 20)], -1).astype(np.float64)
    scores = rng.permutation(Q * K).reshape(Q, K).astype(np.float64)  # distinct
    order = np.argsort(-scores, axis=1)  # score_ranked takes lists ranked best first
    segs = np.take_along_axis(segs, order[..., None], 1)
    scores = np.take_along_axis(scores, order, 1)
    g0 = rng.integers(0, 15, Q)
    gt = np.stack([g0, g0 + rng.integers(2, 11, Q)], -1).astype(np.float64)
    return segs, scores, gt


def eval_cfg(protocol: str):
    return load_config(*FILES, extra=[("params.yaml", {"eval": {"protocol": protocol}})]).eval


@pytest.mark.parametrize("name,reference", [("tall", tall), ("2dtan", tdtan), ("cmin", cmin)])
def test_each_preset_scores_as_its_released_evaluator(case, name, reference):
    segs, scores, gt = case
    got = score_ranked(segs, scores, gt, eval_cfg=eval_cfg(name))
    want = reference(segs.tolist(), scores.tolist(), gt.tolist())
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_the_presets_differ_on_this_case(case):
    """The case tells the presets apart (else the test above could not fail on a swapped preset)."""
    segs, scores, gt = case
    got = {p: score_ranked(segs, scores, gt, eval_cfg=eval_cfg(p)) for p in ("tall", "2dtan", "cmin", "custom")}
    r5 = {p: [got[p][f"R@5,IoU={m:g}"] for m in MS] for p in got}
    r1 = {p: [got[p][f"R@1,IoU={m:g}"] for m in MS] for p in got}
    assert r5["tall"] != r5["2dtan"] and r5["tall"] != r5["custom"] and r5["2dtan"] != r5["custom"]
    assert r1["tall"] == r1["cmin"] != r1["2dtan"]  # >= vs > on exact ties; NMS never moves the top-1


def test_a_preset_sets_its_keys_in_its_layer(tmp_path):
    for name, keys in EVAL_PROTOCOLS.items():
        ev = eval_cfg(name)
        assert ev.protocol == name
        assert {k: getattr(ev, k) for k in keys} == keys
    assert (eval_cfg("tall").iou_rule, eval_cfg("tall").nms) == ("ge", "per_level")
    assert (eval_cfg("2dtan").iou_rule, eval_cfg("2dtan").nms, eval_cfg("2dtan").nms_threshold) == ("gt", "fixed", 0.5)
    assert (eval_cfg("cmin").iou_rule, eval_cfg("cmin").nms) == ("ge", "fixed")
    default = load_config(*FILES).eval
    assert (default.protocol, default.iou_rule, default.nms) == ("custom", "gt", "per_level")
    # the same layer contradicting its preset
    with pytest.raises(ConfigError, match=r"params\.yaml: eval\.protocol 2dtan means iou_rule: gt, nms: fixed, "
                                          r"nms_threshold: 0\.5, but the same layer sets eval\.iou_rule: ge"):
        load_config(*FILES, extra=[("params.yaml", {"eval": {"protocol": "2dtan", "iou_rule": "ge"}})])
    # a later layer changing one of its keys: refused, naming where each value comes from
    with pytest.raises(ConfigError, match=r"eval\.protocol = 'tall' \(in params\.yaml\).*eval\.nms = 'fixed' "
                                          r"\(in --set\).*tall means iou_rule: ge, nms: per_level; a later layer "
                                          r"changed \['nms'\]"):
        load_config(*FILES, extra=[("params.yaml", {"eval": {"protocol": "tall"}}), ("--set", {"eval": {"nms": "fixed"}})])
    # custom mixes freely; an unknown name is refused
    mixed = load_config(*FILES, extra=[("--set", {"eval": {"protocol": "custom", "iou_rule": "ge", "nms": "fixed"}})])
    assert (mixed.eval.iou_rule, mixed.eval.nms) == ("ge", "fixed")
    with pytest.raises(ConfigError, match=r"eval\.protocol.*'tal' is not one of"):
        load_config(*FILES, extra=[("params.yaml", {"eval": {"protocol": "tal"}})])


def test_a_preset_survives_the_checkpoint_round_trip():
    cfg = load_config(*FILES, extra=[("params.yaml", {"eval": {"protocol": "2dtan"}})])
    back = config_from_dict(dataclasses.asdict(cfg), where="checkpoint config")
    assert back.eval == cfg.eval


def test_metrics_files_name_the_preset_and_its_source():
    info = protocol_info(eval_cfg("tall"))
    assert info["preset"] == "tall"
    assert info["text"] == ("preset tall (TALL's evaluator, jiyanggao/TALL main.py): hit: IoU >= m (TALL's and "
                            "CMIN's code); one ranked list per m, NMS at m - 0.05 (TALL's evaluator)")
    assert protocol_info(load_config(*FILES).eval)["text"] == (
        "hit: IoU > m (S4.2 wording, 2D-TAN's code); one ranked list per m, NMS at m - 0.05 (TALL's evaluator)"
    )


def test_captions_name_the_preset():
    from fian.reports.tables import TEX, protocol_text

    p = protocol_info(eval_cfg("2dtan"))
    assert protocol_text(p, TEX) == r"2D-TAN's protocol, hit: IoU $> m$; NMS at IoU 0.5 for every $m$"
    assert protocol_text(protocol_info(load_config(*FILES).eval), TEX).startswith("hit: IoU $> m$; NMS at IoU $m - 0.05$")


def test_params_explain_says_a_preset_set_the_key(tmp_path, capsys):
    from fian_pipeline import cli

    over = tmp_path / "params.yaml"
    over.write_text("eval:\n  protocol: 2dtan\n")
    files = [str(f) for f in FILES]
    assert cli.main(["params", "explain", "eval.nms", "--params", *files, "--overrides", str(over)]) == 0
    out = capsys.readouterr().out
    assert "eval.protocol = '2dtan' sets eval.nms = 'fixed'" in out and out.rstrip().endswith("eval.nms = 'fixed'")
    assert cli.main(["params", "explain", "eval.nms", "--params", *files, "--overrides", ""]) == 0
    out = capsys.readouterr().out
    assert "sets eval.nms" not in out and out.rstrip().endswith("eval.nms = 'per_level'")
