"""eval.paired: differences on the items both methods ran, dialogues only."""

import json
import math

import pytest

from eval.paired import load, paired


def _item(kind, results):
    return {"kind": kind, "results": results}


def test_differences_are_paired_on_the_items_both_methods_have():
    run = {
        "config_keys": ["full", "a@0.5", "b@0.5"],
        "items": [
            _item("dialogue", {"a@0.5": {"kl": 0.1, "top1": 0.9}, "b@0.5": {"kl": 0.3, "top1": 0.8}}),
            _item("dialogue", {"a@0.5": {"kl": 0.4, "top1": 0.7}, "b@0.5": {"kl": 0.2, "top1": 0.9}}),
            _item("dialogue", {"a@0.5": {"kl": 0.2, "top1": 0.8}, "b@0.5": {"kl": 0.3, "top1": 0.8}}),
            _item("dialogue", {"a@0.5": {"kl": 9.0, "top1": 0.0}}),  # b did not run: left out
            _item("needle", {"a@0.5": {"kl": 9.0, "top1": 0.0}, "b@0.5": {"kl": 0.0, "top1": 1.0}}),
        ],
    }
    kl, top1 = paired(run, "a", "b")
    assert kl["metric"] == "kl" and kl["n"] == 3
    assert kl["a"] == pytest.approx(0.7 / 3) and kl["b"] == pytest.approx(0.8 / 3)
    diffs = [-0.2, 0.2, -0.1]
    mean = sum(diffs) / 3
    assert kl["diff"] == pytest.approx(mean)
    assert kl["se"] == pytest.approx(math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2 / 3))
    assert kl["first_better"] == 2  # lower KL
    assert top1["diff"] == pytest.approx((0.1 - 0.2 + 0.0) / 3)
    assert top1["first_better"] == 1  # higher top-1; a tie is not better


def test_a_signal_study_is_read_as_dialogues_with_kl_only(tmp_path):
    study = {
        "items": [
            {"id": "x", "results": {"r/global@0.5": {"kl": 0.1, "padding": 1}, "s/global@0.5": {"kl": 0.3}}},
            {"id": "y", "results": {"r/global@0.5": {"kl": 0.2, "padding": 1}, "s/global@0.5": {"kl": 0.1}}},
        ]
    }
    (tmp_path / "signals.json").write_text(json.dumps(study))
    (row,) = paired(load(tmp_path), "r/global", "s/global")  # no top-1 in a study
    assert row["metric"] == "kl" and row["n"] == 2
    assert row["diff"] == pytest.approx(((0.1 - 0.3) + (0.2 - 0.1)) / 2)
    assert row["first_better"] == 1


def test_two_named_ratios_are_paired_and_each_sides_held_fraction_is_reported():
    run = {
        "config_keys": ["a@0.38", "b@0.2", "b@0.38"],
        "items": [
            _item(
                "dialogue",
                {
                    "a@0.38": {"kl": 0.1, "top1": 0.9, "kept_ratio": 0.2, "wire": 1.8},  # no "held"
                    "b@0.38": {"kl": 0.0, "top1": 1.0, "held": 0.38},
                    "b@0.2": {"kl": 0.3, "top1": 0.8, "held": 0.36},
                },
            ),
            _item(
                "dialogue",
                {
                    "a@0.38": {"kl": 0.2, "top1": 0.8, "held": 0.4},
                    "b@0.2": {"kl": 0.2, "top1": 0.9, "held": 0.4},
                },
            ),
        ],
    }
    kl, _ = paired(run, "a@0.38", "b@0.2")
    assert kl["n"] == 2 and kl["keep_ratio"] == 0.38
    assert kl["diff"] == pytest.approx(((0.1 - 0.3) + (0.2 - 0.2)) / 2)
    assert kl["held"] == pytest.approx(((0.36 + 0.4) / 2, (0.36 + 0.4) / 2))


def test_needle_items_are_paired_on_the_value_and_a_row_without_ratio_pairs_with_every_ratio():
    def needle(logp, hit, full_logp):
        return _item(
            "needle",
            {
                "a@0.5": {"kl": 1.0, "top1": 0.5, "needle_logp": logp, "needle_hit": hit},
                "full": {"kl": 0.0, "top1": 1.0, "needle_logp": full_logp, "needle_hit": 1.0},
            },
        )

    run = {
        "config_keys": ["full", "a@0.5"],
        "items": [needle(-3.0, 0.0, -1.0), needle(-1.5, 1.0, -1.0), needle(-2.0, 0.0, -0.5)],
    }
    rows = {r["metric"]: r for r in paired(run, "a@0.5", "full")}
    assert set(rows) == {"needle_logp", "needle_hit"}, "needles add no KL or top-1 rows"
    logp = rows["needle_logp"]
    assert logp["n"] == 3 and logp["keep_ratio"] == 0.5
    assert logp["diff"] == pytest.approx((-2.0 - 0.5 - 1.5) / 3)
    assert logp["first_better"] == 0  # higher log p is better
    assert rows["needle_hit"]["diff"] == pytest.approx(-2 / 3)
    assert [r["metric"] for r in paired(run, "a", "full")] == ["needle_logp", "needle_hit"]
