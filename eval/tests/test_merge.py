"""eval.merge: a rerun's configurations replace the base run's, and mismatched runs are refused."""

import pytest

from eval.merge import merge, rename


def _run(keys, kl, nll=0.5, ids=("a", "b")):
    items = []
    for n, i in enumerate(ids):
        res = {"full": {"kl": 0.0, "top1": 1.0, "dnll": 0.0, "nll": nll, "max_abs_logprob_diff": 0.0}}
        for k in keys:
            res[k] = {"kl": kl + n, "top1": 0.9, "dnll": 0.1, "nll": nll + 0.1, "max_abs_logprob_diff": 1.0}
        items.append({"id": i, "kind": "dialogue", "results": res})
    return {"complete": True, "config_keys": ["full", *keys], "items": items, "command": "cmd"}


def test_the_rerun_replaces_its_configs_and_keeps_the_rest():
    base = _run(["snapkv@0.5", "sonic@0.5"], kl=1.0)
    rerun = _run(["snapkv@0.5"], kl=0.1)
    out = merge(base, rerun)
    assert out["summary"]["snapkv@0.5"]["kl"] == pytest.approx(0.6)  # (0.1 + 1.1) / 2
    assert out["summary"]["sonic@0.5"]["kl"] == pytest.approx(1.5)  # untouched
    assert out["config_keys"] == ["full", "snapkv@0.5", "sonic@0.5"]
    assert out["merged"]["configs"] == ["snapkv@0.5"]
    assert base["items"][0]["results"]["snapkv@0.5"]["kl"] == 1.0  # the input is not modified


def test_different_items_are_refused():
    with pytest.raises(ValueError, match="different items"):
        merge(_run(["snapkv@0.5"], 1.0), _run(["snapkv@0.5"], 0.1, ids=("a", "c")))


def test_a_different_reference_is_refused():
    with pytest.raises(ValueError, match="references differ"):
        merge(_run(["snapkv@0.5"], 1.0), _run(["snapkv@0.5"], 0.1, nll=0.9))


def test_an_incomplete_run_is_refused():
    rerun = _run(["snapkv@0.5"], 0.1)
    rerun["complete"] = False
    with pytest.raises(ValueError, match="complete"):
        merge(_run(["snapkv@0.5"], 1.0), rerun)


def test_common_merges_partial_runs_on_the_items_both_hold():
    base = _run(["snapkv@0.5", "sonic@0.5"], kl=1.0, ids=("a", "b", "c"))
    base["complete"] = False  # stopped early
    rerun = _run(["sonic@0.5"], kl=0.1, ids=("a", "b"))
    out = merge(base, rerun, common=True)
    assert [i["id"] for i in out["items"]] == ["a", "b"]
    assert out["summary"]["sonic@0.5"]["kl"] == pytest.approx(0.6)  # (0.1 + 1.1) / 2
    assert out["summary"]["snapkv@0.5"]["kl"] == pytest.approx(1.5)  # base, on a and b only
    assert not out["complete"] and out["merged"]["items"] == 2
    with pytest.raises(ValueError, match="no item in common"):
        merge(base, _run(["sonic@0.5"], kl=0.1, ids=("x",)), common=True)


def test_a_renamed_rerun_joins_beside_the_base_rows():
    base = _run(["sonic@0.5"], kl=1.0)
    rerun = rename(_run(["sonic@0.5"], kl=0.1), "sonic", "sonic-probes")
    out = merge(base, rerun)
    assert out["config_keys"] == ["full", "sonic@0.5", "sonic-probes@0.5"]
    assert out["summary"]["sonic@0.5"]["kl"] == pytest.approx(1.5)
    assert out["summary"]["sonic-probes@0.5"]["kl"] == pytest.approx(0.6)
